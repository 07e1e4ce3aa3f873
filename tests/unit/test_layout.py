"""The source layout: each folder is the package it names, imported from the checkout, and the
operator depends on the trainer only through its contract.

A new contributor's IDE, a type checker and a traceback all see one name per file; a
second checkout's test run cannot re-point this one's imports (nothing is installed
into the shared venv); the operator image needs no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import grpo_operator
import grpo_trainer
from support.checkout import ROOT, SOURCE_DIRS, checkout_env

ML_LIBRARIES = {"torch", "transformers", "peft", "trl", "vllm", "dspy", "accelerate", "datasets"}


def test_each_source_folder_is_one_package_of_its_name() -> None:
    for folder in SOURCE_DIRS:
        entries = sorted(p.name for p in folder.iterdir() if p.name != "__pycache__")
        assert entries == [f"grpo_{folder.name}"], f"{folder}: {entries}"
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["where"] == [d.name for d in SOURCE_DIRS]
    assert not (ROOT / "setup.py").exists()  # no rename for tools to miss


def test_the_packages_are_this_checkouts_and_nothing_of_them_is_installed() -> None:
    assert Path(grpo_operator.__file__).resolve() == ROOT / "operator" / "grpo_operator" / "__init__.py"
    assert Path(grpo_trainer.__file__).resolve() == ROOT / "trainer" / "grpo_trainer" / "__init__.py"
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("grpo-operator")  # an install would point every checkout at one tree
    site = Path(sysconfig.get_paths()["purelib"])
    redirects = [p.name for p in site.glob("*.pth") if "grpo" in p.read_text(errors="replace")]
    assert not redirects, f"{site} redirects imports: {redirects}"


def test_another_checkout_on_the_path_does_not_replace_this_one(tmp_path: Path) -> None:
    """A process started with this checkout's environment imports this checkout, wherever it runs,
    even from the repo root (the operator/ folder is no longer a package that shadows the stdlib)."""
    other = tmp_path / "other-clone" / "operator" / "grpo_operator"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise SystemExit('imported the other clone')\n")
    env = checkout_env()
    env["PYTHONPATH"] += f":{other.parent}"
    code = "import operator, grpo_operator; operator.add(1, 2); print(grpo_operator.__file__)"
    for cwd in (ROOT, tmp_path):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(ROOT / "operator" / "grpo_operator" / "__init__.py")


def _trainer_modules_loaded_by(*modules: str) -> tuple[set[str], set[str]]:
    code = f"import sys, {', '.join(modules)}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=checkout_env(), capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    ml = {m for m in loaded if m.split(".")[0] in ML_LIBRARIES}
    trainer = {m for m in loaded if m.startswith("grpo_trainer.")}
    return ml, trainer


def test_the_operator_uses_only_the_trainers_contract_and_no_ml_library() -> None:
    ml, trainer = _trainer_modules_loaded_by(
        "grpo_operator.main", "grpo_operator.controller.handlers", "grpo_operator.children", "grpo_operator.resolve"
    )
    assert not ml, f"the operator image has no ML libraries; loaded: {sorted(ml)}"
    assert {m.split(".")[1] for m in trainer} == {"contract"}, sorted(trainer)


def test_the_local_runner_loads_no_ml_library_until_it_runs() -> None:
    """grpo-local starts in a second (its --help, its errors); torch loads only in the processes it starts."""
    ml, trainer = _trainer_modules_loaded_by("grpo_operator.local.cli", "grpo_operator.local.runner")
    assert not ml, sorted(ml)
    assert {m.split(".")[1] for m in trainer} <= {"contract", "embedded", "vllm", "run"}, sorted(trainer)


def test_the_export_loads_no_ml_library_unless_it_merges() -> None:
    """An export pod that copies and uploads fits in 1Gi: torch loads only to merge."""
    ml, _ = _trainer_modules_loaded_by(
        "grpo_trainer.export.main", "grpo_trainer.export.claim", "grpo_trainer.export.hub", "grpo_trainer.export.s3"
    )
    assert not ml, sorted(ml)


# What a contract module may import besides: vLLM's key guard runs in vLLM's own API server, where it registers
# a pool's served-results resolver with vLLM (imported there only, inside a function).
RUNS_IN_VLLM = {"vllm_guard.py": {"vllm"}}


def test_the_contract_needs_only_the_standard_library_and_pydantic() -> None:
    for path in sorted((ROOT / "trainer" / "grpo_trainer" / "contract").glob("*.py")):
        allowed = set(sys.stdlib_module_names) | {"pydantic", "grpo_trainer"} | RUNS_IN_VLLM.get(path.name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("grpo_trainer"):
                    assert name.startswith("grpo_trainer.contract"), f"{path.name} imports {name}"


def test_every_module_of_both_packages_imports() -> None:
    """Modules only a subprocess imports (the trainer's entry point, the vLLM wrapper) break here, not in a pod."""
    code = (
        "import importlib, pkgutil, grpo_operator, grpo_trainer\n"
        "for pkg in (grpo_operator, grpo_trainer):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=checkout_env(), capture_output=True, text=True, cwd="/")
    # (libraries may print at import, e.g. wandb's offline notice: the last line is the script's)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == ["ok"], out.stderr[-3000:]
