"""A package a test builds and serves from a PEP 503 index on loopback, and a git repository it creates.

What a team's private index and repository are to a GRPOJob's ``spec.code``: the tests
install from them through the job's own fetch (pip, git) with no network beyond this
machine.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path


def build_wheel(name: str, version: str, modules: Mapping[str, str], dest: Path) -> Path:
    """A pure-Python wheel of ``modules`` (path in the wheel -> source), written by hand (no build backend)."""
    dist = f"{name.replace('-', '_')}-{version}"
    wheel = dest / f"{dist}-py3-none-any.whl"
    files = {
        **modules,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: grpo-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory``'s files over HTTP on 127.0.0.1; yields the base URL (with a trailing slash)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def package_index(wheels: list[Path], root: Path) -> Iterator[str]:
    """Serve ``wheels`` as a simple index (``<url>/<project>/``) on 127.0.0.1; yields the index URL."""
    simple = root / "simple"
    for wheel in wheels:
        project = wheel.name.split("-")[0].lower().replace("_", "-")
        (simple / project).mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, simple / project / wheel.name)
        links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted((simple / project).glob("*.whl")))
        (simple / project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    with serve_directory(simple) as url:
        yield url


@contextlib.contextmanager
def git_http(repo: Path, root: Path) -> Iterator[str]:
    """``repo`` served as git's "dumb" HTTP protocol (a bare copy and static files); yields its clone URL."""
    bare = root / "team-task.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True, capture_output=True)
    with serve_directory(root) as url:
        yield f"{url}{bare.name}"


def git_repository(path: Path, files: Mapping[str, str], message: str = "the team's task") -> str:
    """A git repository at ``path`` holding ``files`` in one commit on ``main``; returns the commit."""
    path.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    env_args = ["-c", "user.name=grpo-tests", "-c", "user.email=tests@grpo.invalid", "-c", "init.defaultBranch=main"]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", message]):
        subprocess.run(["git", *env_args, "-C", str(path), *argv], check=True, capture_output=True)
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.strip()
