"""Fetch a job's code before the trainer starts: a git checkout, or pip requirements into a folder.

    python -m grpo_trainer.usercode.fetch git --url URL [--ref REF] [--commit SHA] --dest DIR
    python -m grpo_trainer.usercode.fetch pip --dest DIR REQUIREMENT... [--index-url URL] [--extra-index-url URL]

The job's init containers run this (grpo_operator.resolve.fetch_command decides the
arguments), and so does ``grpo-local`` into the run directory. Credentials come from
the environment only -- ``$GRPO_GIT_TOKEN`` (an HTTPS token, sent as a header, never
written into the URL or a file), ``$GRPO_GIT_SSH_KEY`` (a private key, written 0600 to
the temp dir), ``$PIP_INDEX_URL`` (an index URL with its credentials) -- so they appear
in no manifest, argument list or log. Each fetch leaves ``.grpo-source.json`` in the
folder it fetched (the commit checked out, or ``pip freeze`` of what was installed),
which the trainer records as the code's identity. Exit 0 on success, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from grpo_trainer.contract.config import GIT_SSH_KEY_ENV, GIT_TOKEN_ENV

log = logging.getLogger("grpo_trainer.usercode.fetch")

SOURCE_FILE = ".grpo-source.json"  # what was fetched, in the fetched folder
GIT_TIMEOUT = 600.0
PIP_TIMEOUT = 1800.0


class FetchError(Exception):
    """The code could not be fetched; the message names the command and its last output."""


def _run(argv: list[str], *, env: dict[str, str], timeout: float, cwd: Optional[Path] = None, shown: str) -> str:
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FetchError(f"{shown} did not finish in {timeout:.0f} s") from None
    except OSError as exc:
        raise FetchError(f"{shown}: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise FetchError(f"{shown} exited {done.returncode}: {tail}")
    return done.stdout


def _git_env() -> dict[str, str]:
    """The environment that authenticates git from $GRPO_GIT_TOKEN or $GRPO_GIT_SSH_KEY (and never prompts)."""
    env = {k: v for k, v in os.environ.items() if k not in (GIT_TOKEN_ENV, GIT_SSH_KEY_ENV)}
    env["GIT_TERMINAL_PROMPT"] = "0"
    token = os.environ.get(GIT_TOKEN_ENV)
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        # as configuration in the environment (GIT_CONFIG_*): in no argv that `ps` shows, in no file
        env.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.extraHeader",
            GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        )
    key = os.environ.get(GIT_SSH_KEY_ENV)
    if key:
        fd, path = tempfile.mkstemp(prefix="grpo-ssh-key-")
        with os.fdopen(fd, "w") as fh:
            fh.write(key if key.endswith("\n") else key + "\n")
        os.chmod(path, 0o600)
        env["GIT_SSH_COMMAND"] = f"ssh -i {path} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new"
    return env


def fetch_git(url: str, dest: Path, *, ref: Optional[str] = None, commit: Optional[str] = None) -> str:
    """Clone ``url`` into ``dest`` at ``ref`` (a branch or tag; default the remote's HEAD), or at exactly
    ``commit``; returns the commit checked out. An existing ``dest`` (a rerun) is cloned afresh."""
    env = _git_env()
    if dest.exists():
        shutil.rmtree(dest)
    if commit:  # anywhere in the history: a full clone, then that commit
        clone = ["git", "clone", "--quiet", "--no-checkout", url, str(dest)]
        _run(clone, env=env, timeout=GIT_TIMEOUT, shown=f"git clone {url}")
        _run(
            ["git", "-C", str(dest), "checkout", "--quiet", "--detach", commit],
            env=env,
            timeout=GIT_TIMEOUT,
            shown=f"git checkout {commit}",
        )
    else:
        branch = ["--branch", ref] if ref else []
        shown = f"git clone {url}" + (f" at {ref}" if ref else "")
        try:  # only the tip: code repositories can have long histories
            _run(
                ["git", "clone", "--quiet", "--depth", "1", *branch, url, str(dest)],
                env=env,
                timeout=GIT_TIMEOUT,
                shown=shown,
            )
        except FetchError as exc:
            if "shallow" not in str(exc):  # git's "dumb" HTTP servers cannot serve a shallow clone
                raise
            shutil.rmtree(dest, ignore_errors=True)
            _run(["git", "clone", "--quiet", *branch, url, str(dest)], env=env, timeout=GIT_TIMEOUT, shown=shown)
    head = _run(["git", "-C", str(dest), "rev-parse", "HEAD"], env=env, timeout=60, shown="git rev-parse").strip()
    (dest / SOURCE_FILE).write_text(json.dumps({"git_url": url, "git_ref": ref, "git_commit": head}) + "\n")
    log.info("cloned %s at %s", url, head)
    return head


def fetch_pip(
    requirements: Sequence[str],
    dest: Path,
    *,
    index_url: Optional[str] = None,
    extra_index_urls: Sequence[str] = (),
    deps: bool = False,
) -> list[str]:
    """``pip install --target dest``; returns ``pip freeze`` of what landed there.

    Without ``deps`` only the named requirements are installed: their dependencies are
    expected from the trainer image (a --target install would otherwise bring a second
    torch or transformers that shadows the image's).
    """
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--disable-pip-version-check"]
    argv += ["--target", str(dest), "--upgrade"]
    if not deps:
        argv.append("--no-deps")
    if index_url:
        argv += ["--index-url", index_url]
    for extra in extra_index_urls:
        argv += ["--extra-index-url", extra]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    _run([*argv, *requirements], env=env, timeout=PIP_TIMEOUT, shown=f"pip install {' '.join(requirements)}")
    frozen = _run(
        [sys.executable, "-m", "pip", "freeze", "--path", str(dest), "--disable-pip-version-check"],
        env=env,
        timeout=120,
        shown="pip freeze",
    ).split()
    (dest / SOURCE_FILE).write_text(json.dumps({"pip_requirements": list(requirements), "pip_freeze": frozen}) + "\n")
    log.info("installed %s", ", ".join(frozen))
    return frozen


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="grpo-fetch-code", description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    git = kinds.add_parser("git", help="clone a repository")
    git.add_argument("--url", required=True)
    git.add_argument("--ref")
    git.add_argument("--commit")
    git.add_argument("--dest", type=Path, required=True)
    pip = kinds.add_parser("pip", help="install requirements into a folder")
    pip.add_argument("requirements", nargs="+")
    pip.add_argument("--dest", type=Path, required=True)
    pip.add_argument("--index-url")
    pip.add_argument("--extra-index-url", action="append", default=[])
    pip.add_argument("--deps", action="store_true", help="install their dependencies too")
    args = parser.parse_args(argv)
    try:
        if args.kind == "git":
            fetch_git(args.url, args.dest, ref=args.ref, commit=args.commit)
        else:
            fetch_pip(
                args.requirements,
                args.dest,
                index_url=args.index_url,
                extra_index_urls=args.extra_index_url,
                deps=args.deps,
            )
    except FetchError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
