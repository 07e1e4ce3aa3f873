"""Finding and watching the rank processes of the trainer's launcher (grpo_trainer.run.launch)."""

from __future__ import annotations

from pathlib import Path


def rank_pids(launcher: int) -> dict[int, int]:
    """The launcher's children that are ranks: rank -> pid (found by their ``$RANK``)."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"PPid:\t{launcher}\n" not in (proc / "status").read_text():
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        rank = next((v[len(b"RANK=") :] for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[int(rank)] = int(proc.name)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie has exited, it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
