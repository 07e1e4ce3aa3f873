"""``python -m grpo_operator``."""

from .main import main

raise SystemExit(main())
