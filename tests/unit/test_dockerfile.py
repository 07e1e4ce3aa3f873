"""Static checks of the Dockerfile (no container engine runs here, so nothing is built)."""

from __future__ import annotations

import re
import tomllib

from support.jobdocs import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    stages: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def _scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_operator_and_trainer_targets_exist():
    assert {"operator", "trainer"} <= set(_stages())


def test_runtime_images_run_as_non_root():
    for target in ("operator", "trainer"):
        users = [i.split()[1] for i in _stages()[target] if i.upper().startswith("USER ")]
        assert users, f"{target}: no USER"
        uid = users[-1].split(":")[0]
        assert uid not in ("root", "0") and uid.isdigit(), f"{target} runs as {users[-1]}"


def test_entrypoints_are_console_scripts_of_the_package():
    scripts = _scripts()
    for target in ("operator", "trainer"):
        entry = [i for i in _stages()[target] if i.upper().startswith("ENTRYPOINT")][-1]
        program = re.findall(r'"([^"]+)"', entry)[0]
        assert program in scripts, f"{target} entrypoint {program} is not in [project.scripts]"
        module, func = scripts[program].split(":")
        folder = {"grpo_operator": "operator", "grpo_trainer": "trainer"}[module.split(".")[0]]
        source = ROOT / folder / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{scripts[program]}: {source} missing"
        assert re.search(rf"^def {func}\(", source.read_text(), re.M), f"{scripts[program]}: no {func}()"


def test_operator_image_has_no_torch():
    build = " ".join(_stages()["operator-build"])
    assert ".[operator]" in build and "trainer" not in build and "torch" not in build


def test_base_images_are_pinned():
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.M))
    for line in DOCKERFILE.splitlines():
        m = re.match(r"FROM\s+(\S+)", line)
        if not m:
            continue
        image = m.group(1)
        ref = args.get(image.strip("${}"), image) if image.startswith("$") else image
        if ref in _stages():
            continue  # an earlier stage
        assert ":" in ref and not ref.endswith(":latest"), f"unpinned base image {ref}"
        assert re.search(r":\d+\.\d+\.\d+", ref), f"{ref}: pin a full version"
