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


def _run_lines(stage: str) -> list[str]:
    return [i for i in _stages()[stage] if i.upper().startswith("RUN ")]


def test_trainer_image_has_a_c_compiler_for_triton_and_git_for_code_sources():
    """Triton compiles a C launcher at a kernel's first launch on CUDA (TRL's chunked log-prob kernel);
    spec.code's git sources are cloned by init containers running this image."""
    stage = _stages()["trainer"]
    installs = [r for r in _run_lines("trainer") if "apt-get install" in r]
    assert installs, "the trainer stage installs no compiler"
    (run,) = installs
    packages = set(re.findall(r"apt-get install ([^&]+)", run)[0].split())
    assert {"gcc", "libc6-dev"} <= packages
    assert "--no-install-recommends" in packages and "-y" in packages
    wanted = {"gcc", "libc6-dev", "git", "openssh-client", "ca-certificates"}
    assert packages - {"-y", "--no-install-recommends"} == wanted, "keep the image minimal"
    assert "apt-get update" in run and "rm -rf /var/lib/apt/lists/*" in run, "apt lists cleaned in the same layer"
    # installed as root, before the image switches to its user
    assert stage.index(run) < next(i for i, line in enumerate(stage) if line.upper().startswith("USER "))
    env = " ".join(i for i in stage if i.upper().startswith("ENV "))
    assert re.search(r"\bCC=gcc\b", env)
    cache = re.search(r"TRITON_CACHE_DIR=(\S+)", env)
    assert cache and cache.group(1).startswith(("/tmp/", "$HOME")), (
        "Triton's cache must be writable as the image's user"
    )


def test_torch_comes_from_a_chosen_index_at_the_locks_version():
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.MULTILINE))
    assert args["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    # the driver each choice needs is written next to it
    assert re.search(r"driver >= 580", DOCKERFILE) and "download.pytorch.org/whl/cu126" in DOCKERFILE
    (run,) = [r for r in _run_lines("trainer-build") if "pip install" in r]
    assert '--index-url "${TORCH_INDEX_URL}"' in run
    assert "\"$(grep -E '^torch==' /tmp/cuda-stack.txt)\"" in run, "torch at the lock's version"
    assert run.rstrip().endswith('-c /tmp/constraints.txt ".[trainer]"')


def test_the_lock_accepts_another_indexs_torch_build():
    """With TORCH_INDEX_URL=cu128 torch is 2.13.0+cu128: the lock's pin must still hold, and its CUDA 13
    wheels must not be forced on a CUDA 12 torch."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    lock = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lock if "==" in line and not line.startswith("#"))
    torch = Version(pins["torch"])
    assert SpecifierSet(f"=={pins['torch']}").contains(Version(f"{torch}+cu128"))
    (run,) = [r for r in _run_lines("trainer-build") if "pip install" in r]
    stack = re.compile(re.search(r"stack='([^']+)'", run).group(1))
    cuda = {line.split("==")[0] for line in lock if stack.match(line)}
    rest = {line.split("==")[0] for line in lock if "==" in line and not stack.match(line)}
    assert {"torch", "triton", "cuda-toolkit"} <= cuda and {n for n in pins if n.startswith("nvidia-")} <= cuda
    # everything else the trainer runs on stays pinned by the lock
    assert {"transformers", "peft", "trl", "accelerate", "dspy", "datasets", "filelock", "sympy"} <= rest
    assert "torch==" in run and 'print("torch==" + version("torch"))\' >> /tmp/constraints.txt' in run
