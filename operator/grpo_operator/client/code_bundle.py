"""The user's program and metric as a folder of code the trainer imports (``spec.code``).

``compile()`` is handed live objects; the trainer needs ``module:attr`` import paths
and the source behind them. Each object is shipped by where it was defined:

* a module of the user's own (a file that is not part of an installed distribution):
  its top-level package (or the lone module file) is copied as it is;
* ``__main__`` (a notebook or a script): the definitions it needs, cut out by
  :mod:`.main_source`, as the module ``grpo_main``;
* an installed distribution (site-packages): not shipped; the trainer image must
  have it, and the bundle says which distribution and version the notebook used.

Modules the shipped code imports are followed the same way, so a notebook that
imports ``my_metrics.py`` from its folder ships that file too.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional

from grpo_operator.client.errors import BundleError
from grpo_operator.client.main_source import SourceError, extract
from grpo_operator.code_pack import DEFAULT_EXCLUDES

log = logging.getLogger(__name__)

MAIN_MODULE = "grpo_main"  # what ``__main__``'s definitions are called in the trainer
# Provided by the trainer image: never shipped (a copy would shadow the image's own).
IMAGE_PACKAGES = frozenset({"grpo_trainer", "grpo_operator"})
MAX_FILE_BYTES = 512 * 1024  # a file this large in a code folder is data, not code: left out with a warning


@dataclass
class CodeBundle:
    """A folder for ``spec.code`` (a packed ConfigMap, or ``grpo-local --code``) and what it holds."""

    root: Path
    modules: list[str] = field(default_factory=list)  # top-level modules and packages in it
    installed: dict[str, str] = field(default_factory=dict)  # module -> "distribution==version" the image needs
    main_names: tuple[str, ...] = ()  # names of ``__main__`` shipped in grpo_main (their LMs need keys)


def _installed_roots() -> tuple[Path, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return tuple(Path(p).resolve() for p in paths if p)


def _origin(module: str) -> Optional[Path]:
    """The file a top-level module is loaded from (None: built in, frozen or not found)."""
    if module in sys.modules and getattr(sys.modules[module], "__file__", None):
        return Path(sys.modules[module].__file__).resolve()  # type: ignore[arg-type]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin).resolve()


def _distribution(module: str) -> Optional[str]:
    """``name==version`` of the installed distribution that provides a top-level module."""
    names = metadata.packages_distributions().get(module) or []
    for name in names:
        try:
            return f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def _is_users(module: str, path: Optional[Path]) -> bool:
    """A module of the user's own: a file outside the interpreter's installation and not the image's."""
    if path is None or module in IMAGE_PACKAGES or module in sys.stdlib_module_names:
        return False
    return not any(path.is_relative_to(root) for root in _installed_roots())


def _imported_modules(source: str) -> set[str]:
    """Top-level module names a source file imports (absolute imports only)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _copy_tree(src: Path, dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(shutil.ignore_patterns(*DEFAULT_EXCLUDES)(directory, names))
        for name in names:
            path = Path(directory) / name
            if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
                log.warning(
                    "not shipping %s (%d KiB): a code folder's data belongs on a volume",
                    path,
                    path.stat().st_size // 1024,
                )
                skipped.add(name)
        return skipped

    shutil.copytree(src, dest, ignore=ignore)


def _qualname(obj: Any, role: str) -> str:
    name = getattr(obj, "__qualname__", None)
    if not isinstance(name, str) or not getattr(obj, "__module__", None):
        raise BundleError(f"the {role} ({obj!r}) is not a class or a function; pass the class or function itself")
    if "<locals>" in name or "<lambda>" in name:
        raise BundleError(
            f"the {role} {name} is defined inside a function or is a lambda; define it at the top level of a "
            "module, notebook or script so the trainer can import it"
        )
    return name


def make_bundle(objects: Mapping[str, Any], root: Path) -> tuple[dict[str, str], CodeBundle]:
    """Ship each object (role -> class or function) into ``root``; returns role -> ``module:attr``."""
    root.mkdir(parents=True, exist_ok=True)
    bundle = CodeBundle(root=root)
    paths: dict[str, str] = {}
    from_main: dict[str, str] = {}
    pending: set[str] = set()
    for role, obj in objects.items():
        qualname = _qualname(obj, role)
        module = obj.__module__
        if module == "__main__":
            from_main[role] = qualname
            paths[role] = f"{MAIN_MODULE}:{qualname}"
            continue
        paths[role] = f"{module}:{qualname}"
        pending.add(module.split(".")[0])

    if from_main:
        try:
            source = extract({q.split(".")[0] for q in from_main.values()})
        except SourceError as exc:
            raise BundleError(str(exc)) from None
        if source.undefined:
            log.warning(
                "the notebook's definitions read names it never defines (they must exist in the trainer): %s",
                ", ".join(source.undefined),
            )
        (root / f"{MAIN_MODULE}.py").write_text(source.text, encoding="utf-8")
        bundle.main_names = source.defines
        bundle.modules.append(MAIN_MODULE)
        pending |= _imported_modules(source.text)

    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen or module == MAIN_MODULE:
            continue
        seen.add(module)
        path = _origin(module)
        if not _is_users(module, path):
            if path is not None and module not in IMAGE_PACKAGES and module not in sys.stdlib_module_names:
                dist = _distribution(module)
                if dist:
                    bundle.installed[module] = dist
            continue
        assert path is not None
        if path.name == "__init__.py":
            _copy_tree(path.parent, root / module)
            files = list((root / module).rglob("*.py"))
        else:
            shutil.copy2(path, root / path.name)
            files = [root / path.name]
        bundle.modules.append(module)
        for file in files:
            pending |= _imported_modules(file.read_text(encoding="utf-8", errors="replace"))
    return paths, bundle
