"""What a notebook or script defines at its top level, cut down to what the trainer needs.

A program class and a metric written in a notebook live in ``__main__``, which the
trainer cannot import. Pickling them by value would tie the job to the notebook's
exact Python version and would carry every LM object they reach, API keys included.
So :func:`extract` ships *source*: from the notebook's cells (IPython's input
history) or the script's file, it keeps the top-level statements that define the
names the program and metric use, transitively, together with the statements that
configure those names afterwards (``llm_judge.set_lm(openai_lm)``), in their
original order. Everything else -- loading data, calling ``compile()``, printing,
shell escapes and magics -- is left out, so importing the result in the trainer has
no side effect the user did not write into a needed definition.

A needed statement that writes a secret as a literal (``dspy.LM(..., api_key="sk-...")``)
is refused: the source travels in a ConfigMap, and keys travel only in Secrets.
"""

from __future__ import annotations

import ast
import builtins
import logging
import re
import symtable
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger(__name__)

# Keyword arguments that carry credentials, and literals that look like keys.
SECRET_KEYWORDS = frozenset({"api_key", "apikey", "token", "access_token", "secret", "password", "secret_key"})
SECRET_LITERAL = re.compile(r"^(sk-|hf_|ghp_|github_pat_|xox[bp]-|AKIA)[A-Za-z0-9_\-]{8,}")


class SourceError(ValueError):
    """The program or metric cannot be shipped as source; the message names the object and the fix."""


@dataclass(frozen=True)
class _Statement:
    node: ast.stmt
    defines: frozenset[str]
    uses: frozenset[str]
    configures: frozenset[str]  # names whose objects it changes without rebinding them (x.f(...), x.a = ...)
    origin: str  # "cell 3", "script.py:12", for messages


def main_source_text() -> tuple[list[tuple[str, str]], str]:
    """The code of ``__main__`` as (origin, text) chunks: the notebook's cells in order, or the script file.

    Raises SourceError when neither exists (``python -c``, a REPL without history)."""
    shell = _ipython()
    if shell is not None:
        cells = [c for c in shell.user_ns.get("In", []) if isinstance(c, str) and c.strip()]
        if cells:
            return [(f"cell {i + 1}", c) for i, c in enumerate(cells)], "the notebook"
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and Path(path).is_file():
        return [(Path(path).name, Path(path).read_text(encoding="utf-8"))], str(path)
    raise SourceError(
        "the program or metric is defined in an interactive session whose source cannot be read; "
        "define it in a module file (it is then shipped as is) or in a notebook or script"
    )


def _ipython() -> object | None:
    """The running IPython shell, if any (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None) if ipython is not None else None
    return get() if callable(get) else None


def _drop_magics(cell: str) -> str:
    """IPython's history holds cells as transformed Python; lines a user typed as ``%magic`` or ``!cmd``
    may still appear raw in some front ends: they are not Python and never needed, so they go."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.splitlines())


def _reads(stmt: ast.stmt) -> set[str]:
    """Module-level names a statement reads, at any depth: a function's own locals and parameters, a
    class body's attributes and a comprehension's variables are not module names (symtable knows scopes)."""
    names: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            if sym.is_referenced() and (table.get_type() == "module" or sym.is_global()):
                names.add(sym.get_name())
        for child in table.get_children():
            visit(child)

    visit(symtable.symtable(ast.unparse(stmt), "<statement>", "exec"))
    return names


def _bound_at_top(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement binds in the module's namespace."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names if a.name != "*"}
    names: set[str] = set()
    # assignments, for/with/try/if blocks: whatever they store into plain names (not inside nested defs)
    for node in _walk_outside_scopes(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not stmt:
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and node is not stmt:
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return names


def _walk_outside_scopes(stmt: ast.AST) -> Iterable[ast.AST]:
    """ast.walk that does not descend into function or class bodies (their names are their own)."""
    todo = [stmt]
    while todo:
        node = todo.pop()
        yield node
        if node is not stmt and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        todo.extend(ast.iter_child_nodes(node))


def _root_name(node: ast.expr) -> Optional[str]:
    """``a`` for ``a.b.c``, ``a[0].b`` and ``a.b(...)``."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _configured(stmt: ast.stmt) -> set[str]:
    """Objects a statement changes in place: ``x.set_lm(...)``, ``x.attr = ...``, ``x[k] = ...``."""
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Attribute):
        targets.append(stmt.value.func)
    elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        raw = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        targets.extend(t for t in raw if isinstance(t, (ast.Attribute, ast.Subscript)))
    roots = {_root_name(t) for t in targets}
    return {r for r in roots if r is not None}


def _statements(chunks: list[tuple[str, str]]) -> list[_Statement]:
    out: list[_Statement] = []
    for origin, text in chunks:
        try:
            tree = ast.parse(_drop_magics(text))
        except SyntaxError as exc:
            log.warning("skipping %s of the notebook/script: not valid Python (%s)", origin, exc.msg)
            continue
        for stmt in tree.body:
            defines = _bound_at_top(stmt)
            configures = _configured(stmt)
            out.append(
                _Statement(
                    node=stmt,
                    defines=frozenset(defines),
                    uses=frozenset(_reads(stmt) | configures),
                    configures=frozenset(configures - defines),
                    origin=f"{origin}:{stmt.lineno}" if ":" not in origin else origin,
                )
            )
    return out


def _is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` -- what a script runs, never what it defines for others."""
    test = stmt.test if isinstance(stmt, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _secret_literals(stmt: ast.stmt) -> list[str]:
    found = []
    for node in ast.walk(stmt):
        if isinstance(node, ast.keyword) and node.arg and node.arg.lower() in SECRET_KEYWORDS:
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) and node.value.value:
                found.append(f"{node.arg}=<literal>")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SECRET_LITERAL.match(node.value):
            found.append(f"a literal starting {node.value[:5]!r}")
    return found


@dataclass(frozen=True)
class MainSource:
    """The cut-down module, and what it could not find."""

    text: str
    defines: tuple[str, ...]  # the module-level names it binds
    undefined: tuple[str, ...]  # names the kept code reads that the notebook never defines (builtins excluded)
    statements: int


def extract(names: Iterable[str], chunks: Optional[list[tuple[str, str]]] = None, where: str = "") -> MainSource:
    """The module that defines ``names`` as ``__main__`` does: needed imports, definitions and configuring
    statements, transitively, in order. Raises SourceError for a name never defined or a literal secret."""
    if chunks is None:
        chunks, where = main_source_text()
    statements = [s for s in _statements(chunks) if not _is_main_guard(s.node)]
    # Calls on imported modules (dspy.configure(...), os.environ[...] = ...) configure the notebook's
    # process, not a definition: the trainer configures its own.
    modules = set().union(*(s.defines for s in statements if isinstance(s.node, (ast.Import, ast.ImportFrom))))
    wanted = set(names)
    defined_anywhere = set().union(*(s.defines for s in statements)) if statements else set()
    missing = sorted(wanted - defined_anywhere)
    if missing:
        raise SourceError(
            f"{', '.join(missing)} is not defined at the top level of {where or 'the notebook'}; "
            "define it at the top level (not inside a function), or in a module file"
        )
    keep: set[int] = set()
    needed = set(wanted)
    changed = True
    while changed:
        changed = False
        for i, stmt in enumerate(statements):
            if i in keep:
                continue
            if stmt.defines & needed or (stmt.configures - modules) & needed:
                keep.add(i)
                new = stmt.uses - needed
                if new:
                    needed |= new
                changed = True
    kept = [statements[i] for i in sorted(keep)]
    for stmt in kept:
        secrets = _secret_literals(stmt.node)
        if secrets:
            raise SourceError(
                f"{stmt.origin} writes a secret into the code the trainer gets ({', '.join(secrets)}); the code "
                "travels in a ConfigMap. Read the key from the environment instead (dspy.LM reads OPENAI_API_KEY "
                "and similar by itself; compile() passes those variables through a Secret)"
            )
    bound = set().union(*(s.defines for s in kept)) if kept else set()
    undefined = sorted(n for n in needed - bound if not hasattr(builtins, n) and n not in {"__name__", "__file__"})
    header = (
        f'"""Generated by grpo compile() from {where or "the notebook"}: '
        'the definitions the program and metric need."""\n'
    )
    body = "\n\n".join(ast.unparse(s.node) for s in kept)
    return MainSource(
        text=header + "\n" + body + "\n", defines=tuple(sorted(bound)), undefined=tuple(undefined), statements=len(kept)
    )
