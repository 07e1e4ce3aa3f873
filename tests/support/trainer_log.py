"""Reading the trainer's structured log (one JSON object a line) in tests."""

from __future__ import annotations

import json
import re


def steps_done(trainer_log: str) -> list[int]:
    """Steps the trainer reports finishing, in order (its JSON log lines: msg "step done")."""
    done = []
    for line in trainer_log.splitlines():
        if '"step done"' in line:
            try:
                done.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError):
                match = re.search(r'"step": (\d+)', line)
                assert match, line
                done.append(int(match.group(1)))
    return done
