"""The job's code fetch (what the trainer pod's init containers run): git at a ref or a pinned commit,
pip into a folder from an index, credentials kept out of arguments and files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from grpo_trainer.usercode import fetch
from grpo_trainer.usercode.fetch import SOURCE_FILE, FetchError, fetch_git, fetch_pip
from support.pyindex import build_wheel, git_repository, package_index


def test_git_checks_out_the_ref_or_exactly_the_pinned_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = git_repository(repo, {"pkg/mod.py": "VERSION = 1\n"})
    second = git_repository(repo, {"pkg/mod.py": "VERSION = 2\n"}, message="v2")
    head = fetch_git(f"file://{repo}", tmp_path / "at-main", ref="main")
    assert head == second and "VERSION = 2" in (tmp_path / "at-main" / "pkg" / "mod.py").read_text()
    pinned = fetch_git(f"file://{repo}", tmp_path / "pinned", commit=first)
    assert pinned == first and "VERSION = 1" in (tmp_path / "pinned" / "pkg" / "mod.py").read_text()
    record = json.loads((tmp_path / "pinned" / SOURCE_FILE).read_text())
    assert record["git_commit"] == first
    # a rerun (a restarted init container, a resumed local run) fetches afresh
    assert fetch_git(f"file://{repo}", tmp_path / "pinned", ref="main") == second


def test_a_dumb_http_server_gets_a_full_clone(tmp_path: Path) -> None:
    """Static-file git hosting cannot serve shallow clones; the fetch falls back to a full one."""
    from support.pyindex import git_http

    repo = tmp_path / "repo"
    commit = git_repository(repo, {"pkg/mod.py": "VERSION = 1\n"})
    with git_http(repo, tmp_path / "served") as url:
        assert fetch_git(url, tmp_path / "out", ref="main") == commit


def test_a_missing_repository_or_ref_is_a_clear_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git_repository(repo, {"a.py": ""})
    with pytest.raises(FetchError, match=r"git clone .* at no-such-branch exited"):
        fetch_git(f"file://{repo}", tmp_path / "out", ref="no-such-branch")
    with pytest.raises(FetchError, match="git clone file:///nowhere exited"):
        fetch_git("file:///nowhere", tmp_path / "out2")


def test_the_token_goes_in_the_environment_not_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.GIT_TOKEN_ENV, "ghp_secret")
    calls: list[tuple[list[str], dict[str, str]]] = []

    def record(argv, env, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((argv, env))
        return subprocess.CompletedProcess(argv, 0, stdout="0" * 40 + "\n", stderr="")

    monkeypatch.setattr(fetch.subprocess, "run", record)
    with pytest.raises(OSError):  # the record file: the fake clone made no folder
        fetch_git("https://git.example/team/task.git", Path("/nonexistent/out"), ref="main")
    argv, env = calls[0]
    assert not any("ghp_secret" in a for a in argv)
    assert fetch.GIT_TOKEN_ENV not in env  # git never sees the raw variable
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader" and env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")


def test_pip_installs_only_the_named_requirements_from_the_index_and_records_them(tmp_path: Path) -> None:
    wheel = build_wheel("topic-words", "1.0", {"topic_words.py": "X = 1\n"}, tmp_path / "wheels")
    with package_index([wheel], tmp_path / "index") as index:
        frozen = fetch_pip(["topic-words==1.0"], tmp_path / "site", index_url=index)
    assert frozen == ["topic-words==1.0"]
    assert (tmp_path / "site" / "topic_words.py").is_file()
    assert json.loads((tmp_path / "site" / SOURCE_FILE).read_text())["pip_freeze"] == frozen
    with package_index([wheel], tmp_path / "index2") as index, pytest.raises(FetchError, match="pip install"):
        fetch_pip(["topic-words==9.9"], tmp_path / "site2", index_url=index)
