"""The trainer pod's launcher for more than one training process (instead of torchrun).

    python -m grpo_trainer.run.launch --nproc 3 grpo_trainer.run.main --config /etc/grpo/config.json
    python -m grpo_trainer.run.launch --nproc 2 path/to/script.py ARGS   (a file instead of a module)

Why not torchrun: torchrun forwards the kubelet's SIGTERM and SIGKILLs its workers
after ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` (30 s), usually before the step boundary
where the trainer checkpoints, and it reports a worker's exit 75 ("stopped after a
checkpoint, resume me") as 1, so a drain counts against ``backoffLimit``. This
launcher forwards SIGTERM/SIGINT once to every worker and waits for them without a
deadline of its own (the pod's ``terminationGracePeriodSeconds`` bounds it), and
exits with the workers' own verdict:

* every worker 0 -> 0 (done);
* the main worker found the job invalid (78) -> the others are killed and the
  launcher exits 78: the operator fails the job without a retry;
* a worker failed or died of a signal -> the others are killed at once (their
  collectives cannot complete without it) and the launcher exits 1: the attempt is
  lost back to the last checkpoint, and the next one resumes from there;
* otherwise, a worker exited 75 -> 75 (interrupted after a checkpoint).

It also hosts the group's TCP key-value store (``MASTER_ADDR``/``MASTER_PORT``), which
outlives any one worker: the data-parallel ranks wait on it, not in a collective, while
the main rank waits for vLLM and validates (``distributed.wait_for_main``).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Optional

from grpo_trainer.contract import exit_codes
from grpo_trainer.run.logs import configure_logging

log = logging.getLogger(__name__)

STORE_HOST = "127.0.0.1"  # one pod, one node: the ranks and the store share the loopback
POLL_SECONDS = 0.2
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Exits that let the other ranks finish (done, or stopped after a checkpoint); any other ends the attempt.
CLEAN_EXITS = (exit_codes.DONE, exit_codes.INTERRUPTED)


@dataclass
class Worker:
    rank: int
    proc: subprocess.Popen[bytes]

    @property
    def code(self) -> Optional[int]:
        return self.proc.poll()


def worker_env(rank: int, nproc: int, port: int, base: dict[str, str]) -> dict[str, str]:
    """The environment torch.distributed's env:// convention expects, for one rank of one node."""
    return {
        **base,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0",
        "MASTER_ADDR": STORE_HOST,
        "MASTER_PORT": str(port),
        # The store is the launcher's: ranks (rank 0 included) connect to it as clients.
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((STORE_HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the launcher dies (a SIGKILLed launcher outside a
    container, e.g. under grpo-local, must not leave ranks behind holding memory and the port)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def verdict(codes: list[int]) -> int:
    """The launcher's exit status from its workers' (negative: killed by that signal).

    An invalid job (one rank found it, the others were then killed) stays invalid: no retry helps.
    """
    if exit_codes.INVALID_JOB in codes:
        return exit_codes.INVALID_JOB
    if any(code not in CLEAN_EXITS for code in codes):
        return exit_codes.FAILED
    if any(code == exit_codes.INTERRUPTED for code in codes):
        return exit_codes.INTERRUPTED
    return exit_codes.DONE


class Launcher:
    """Starts ``nproc`` ranks of ``python -m MODULE ARGS`` (or ``python FILE.py ARGS``) and supervises them."""

    def __init__(self, nproc: int, target: str, args: list[str]) -> None:
        self.nproc = nproc
        self.argv = [sys.executable, target, *args] if target.endswith(".py") else [sys.executable, "-m", target, *args]
        self.workers: list[Worker] = []
        self.forwarded: set[int] = set()

    def _forward(self, signum: int, _frame: Optional[FrameType]) -> None:
        if signum in self.forwarded:  # a second signal changes nothing: the workers already stop
            return
        self.forwarded.add(signum)
        log.warning("signal %s: forwarded to %d ranks", signal.Signals(signum).name, len(self.workers))
        for w in self.workers:
            if w.code is None:
                w.proc.send_signal(signum)

    def _kill_rest(self, failed: Worker) -> None:
        log.error(
            "rank %d exited %s: stopping the other ranks (the attempt resumes from its last checkpoint)",
            failed.rank, failed.code,
        )  # fmt: skip
        for w in self.workers:
            if w.code is None:
                w.proc.kill()

    def run(self) -> int:
        # The ranks start before the store (they retry connecting until it listens): the fork
        # happens while this process has one thread, so preexec_fn is safe here.
        port = free_port()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        base = dict(os.environ)
        for rank in range(self.nproc):
            # Own session: a terminal's Ctrl-C reaches the workers once, through the launcher.
            env = worker_env(rank, self.nproc, port, base)
            proc = subprocess.Popen(self.argv, env=env, start_new_session=True, preexec_fn=_die_with_parent)
            self.workers.append(Worker(rank, proc))
            for signum in self.forwarded:  # a signal that came while the ranks were starting
                proc.send_signal(signum)
        from torch.distributed import TCPStore  # here: `--help` and the tests of verdict() need no torch

        store = TCPStore(STORE_HOST, port, self.nproc, is_master=True, wait_for_workers=False)
        log.info("started %d ranks", self.nproc, extra={"store_port": store.port, "argv": self.argv})
        killed = False
        while any(w.code is None for w in self.workers):
            failed = next((w for w in self.workers if w.code is not None and w.code not in CLEAN_EXITS), None)
            if failed is not None and not killed:
                self._kill_rest(failed)
                killed = True
            time.sleep(POLL_SECONDS)
        codes = [int(w.proc.returncode) for w in self.workers]
        status = verdict(codes)
        log.info("ranks finished", extra={"exit_codes": codes, "exit_status": status})
        return status


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo-launch", description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, required=True, help="ranks to start (one per training GPU)")
    parser.add_argument("target", help="what each rank runs: a module (python -m MODULE) or a .py file")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    ns = parser.parse_args(argv)
    if ns.nproc < 1:
        parser.error("--nproc must be at least 1")
    configure_logging(None)
    return Launcher(ns.nproc, ns.target, ns.args).run()


if __name__ == "__main__":
    sys.exit(main())
