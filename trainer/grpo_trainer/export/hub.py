"""A hub destination: one commit of the result's files to a model repository on the Hugging Face
hub or a compatible one (``endpoint``), created private unless told otherwise."""

from __future__ import annotations

from huggingface_hub import CommitOperationAdd, HfApi

from grpo_trainer.contract.export import HubTarget
from grpo_trainer.export.layout import Files


def push_to_hub(files: Files, to: HubTarget, token: str, message: str) -> str:
    """Commit ``files`` to the repository (and branch), creating them if missing; returns the commit id."""
    api = HfApi(endpoint=to.endpoint, token=token)
    api.create_repo(to.repo_id, repo_type="model", private=to.private, exist_ok=True)
    if to.revision:
        api.create_branch(to.repo_id, branch=to.revision, repo_type="model", exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in files.items()]
    commit = api.create_commit(to.repo_id, operations, commit_message=message, revision=to.revision, repo_type="model")
    return commit.oid
