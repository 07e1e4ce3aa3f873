"""Where this checkout's packages are, and how a child process imports them.

Nothing of the project is installed into the shared venv (two checkouts would
point each other's imports at one tree): every process the tests start gets this
checkout's source folders on its PYTHONPATH, as an image gets its site-packages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# operator/ holds grpo_operator, trainer/ holds grpo_trainer (pyproject's packages.find).
SOURCE_DIRS = (ROOT / "operator", ROOT / "trainer")


def pythonpath(base: str | None = None) -> str:
    """This checkout's source folders first, then ``base`` (other entries kept, own entries not repeated)."""
    own = [str(d) for d in SOURCE_DIRS]
    rest = [p for p in (base or "").split(os.pathsep) if p and p not in own]
    return os.pathsep.join(own + rest)


def checkout_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) importing this checkout's packages."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = pythonpath(env.get("PYTHONPATH"))
    return env
