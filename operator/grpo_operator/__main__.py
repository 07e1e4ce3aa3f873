"""``python -m grpo_operator``."""

from grpo_operator.main import main

raise SystemExit(main())
