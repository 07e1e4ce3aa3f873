"""A fake of the Hugging Face hub's HTTP API: the calls huggingface_hub makes to create a repository, a
branch and a commit of small files, served on loopback and kept in memory.

A fake, and why: no implementation of the hub's write API can be installed or reached here (the hub
is a hosted service; its open-source relatives serve downloads only). This one answers what
``HfApi.create_repo``, ``create_branch`` and ``create_commit`` send -- repos/create, branch, the
README's validate-yaml, preupload (every file "regular": base64 inside the commit, no LFS or Xet
transfer) and commit (NDJSON) -- and checks the bearer token, so a test sees what an export
committed, to which branch, with which visibility.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})  # branch -> path -> content
    commits: list[tuple[str, str, str]] = field(default_factory=list)  # (branch, oid, summary)


@dataclass
class FakeHub:
    token: str
    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return
            parts = [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
            with hub.lock:
                self._post(parts, body)

        def _post(self, parts: list[str], body: bytes) -> None:
            if parts == ["api", "validate-yaml"]:
                self._reply(200, {"errors": [], "warnings": []})
            elif parts == ["api", "repos", "create"]:
                doc = json.loads(body)
                repo_id = f"{doc['organization']}/{doc['name']}"
                if repo_id in hub.repos:
                    self._reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                    return
                hub.repos[repo_id] = Repo(private=doc.get("visibility") == "private")
                self._reply(200, {"url": f"{hub.url}/{repo_id}"})
            elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "branch":
                repo = hub.repos.get(f"{parts[2]}/{parts[3]}")
                if repo is None:
                    self._reply(404, {"error": "Repository not found"})
                elif parts[5] in repo.branches:
                    self._reply(409, {"error": "Reference already exists"})
                else:
                    repo.branches[parts[5]] = dict(repo.branches["main"])
                    self._reply(200, {})
            elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
                files = json.loads(body)["files"]
                self._reply(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
                self._commit(f"{parts[2]}/{parts[3]}", parts[5], body)
            else:
                self._reply(404, {"error": f"no such endpoint: POST /{'/'.join(parts)}"})

        def _commit(self, repo_id: str, branch: str, body: bytes) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None or branch not in repo.branches:
                self._reply(404, {"error": "Repository or revision not found"})
                return
            summary = ""
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    summary = item["value"]["summary"]
                elif item["key"] == "file":
                    repo.branches[branch][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                else:
                    self._reply(400, {"error": f"the fake hub takes regular files only, not {item['key']}"})
                    return
            oid = hashlib.sha1(f"{repo_id}{branch}{len(repo.commits)}{summary}".encode()).hexdigest()
            repo.commits.append((branch, oid, summary))
            self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})

    return Handler


@contextmanager
def fake_hub(token: str) -> Iterator[FakeHub]:
    """A hub on a free loopback port for the life of the block; ``hub.url`` is its endpoint."""
    hub = FakeHub(token=token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
