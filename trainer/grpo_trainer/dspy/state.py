"""A DSPy program's state without its LMs: what travels with a result or a submitted job.

``Module.save``/``dump_state`` write each predictor's LM with its settings, and an LM's
settings can hold an endpoint's key. The state that leaves a process (result/program.json,
the student's state a ``compile()`` ships) keeps instructions, demos and fields only;
whoever loads it binds the LMs that fit where it runs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

PROGRAM_FILE = "program.json"


def without_lms(state: Any) -> Any:
    """A program's state with every predictor's LM dropped, at any depth (a predictor's state has a signature)."""
    if isinstance(state, dict):
        return {k: None if k == "lm" and "signature" in state else without_lms(v) for k, v in state.items()}
    if isinstance(state, list):
        return [without_lms(v) for v in state]
    return state


def program_state(program: Any) -> dict[str, Any]:
    """The program's state exactly as ``Module.save`` writes it (what ``Module.load`` reads), LMs dropped."""
    with tempfile.TemporaryDirectory(prefix="grpo-program-") as tmp:
        path = Path(tmp) / PROGRAM_FILE
        program.save(str(path))
        state = json.loads(path.read_text(encoding="utf-8"))
    return without_lms(state)


def load_state_keeping_lms(program: Any, state: dict[str, Any]) -> Any:
    """``program.load_state(state)`` for a state without LMs, keeping the LMs the program set itself.

    DSPy's ``Predict.load_state`` replaces a predictor's LM with the state's (``None`` here), which would
    unbind a predictor the program's constructor gave an LM of its own."""
    own = {name: predictor.lm for name, predictor in program.named_predictors()}
    program.load_state(state)
    for name, predictor in program.named_predictors():
        if own.get(name) is not None:
            predictor.lm = own[name]
    return program
