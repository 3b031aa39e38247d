"""A hash of the code one stage runs, for the rules' `code` param.

Snakemake's `code` trigger sees a rule's script, not the library it imports, so each rule's params
carry this hash: a change to the code of one stage re-runs that stage and what follows it, and
nothing else (issue 12). The code of a stage is:

- its script under workflow/scripts/ (as parsed code);
- the `stages.py` functions it calls (`stages.generate`, ...) and, transitively, the `stages.py`
  functions and module-level names those use;
- every `cotransfer` module imported by any of those, anywhere in them (imports inside functions
  included), and transitively every `cotransfer` module those modules import. A package
  (`cotransfer.datasets`) counts with all its modules.

Code is compared as parsed syntax with docstrings dropped: comments, docstrings and formatting
change nothing; a changed statement or constant changes the hash.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

import cotransfer

PACKAGE_DIR = Path(cotransfer.__file__).resolve().parent
STAGES = "cotransfer.stages"


def _module_files(module: str, pkg: Path = PACKAGE_DIR) -> list[Path]:
    """The files of a `cotransfer...` module (all of a package's); [] if there is none."""
    rel = module.split(".")[1:]
    base = pkg.joinpath(*rel)
    if base.is_dir():
        return sorted(base.rglob("*.py"))
    f = base.with_suffix(".py")
    return [f] if f.is_file() else []


def _imports(tree: ast.AST, pkg: Path = PACKAGE_DIR) -> set[str]:
    """`cotransfer` modules imported anywhere in `tree` (`from cotransfer import io` names io)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "cotransfer"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "cotransfer":
                continue
            out.add(node.module)
            for a in node.names:  # `from cotransfer import io` imports a module
                if _module_files(f"{node.module}.{a.name}", pkg):
                    out.add(f"{node.module}.{a.name}")
    return {m for m in out if m != "cotransfer"}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _parse(path: Path) -> ast.Module:
    return _parse_text(path.read_text())


@lru_cache(maxsize=None)
def _parse_text(text: str) -> ast.Module:
    return _strip_docstrings(ast.parse(text))


def _names(node: ast.AST) -> set[str]:
    """Bare names and `stages.x` attributes used in `node`."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "stages":
            out.add(n.attr)
    return out


def _stages_parts(roots: set[str], pkg: Path) -> tuple[list[ast.AST], set[str]]:
    """The top-level statements of stages.py that `roots` reach, and the modules they import."""
    tree = _parse(_module_files(STAGES, pkg)[0])
    defs: dict[str, ast.AST] = {}
    always: list[ast.AST] = []  # imports at module level: everything in stages.py sees them
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[stmt.name] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        defs[n.id] = stmt
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            always.append(stmt)
    seen: dict[int, ast.AST] = {}
    todo = [n for n in sorted(roots) if n in defs]
    while todo:
        stmt = defs[todo.pop()]
        if id(stmt) in seen:
            continue
        seen[id(stmt)] = stmt
        todo += [n for n in sorted(_names(stmt)) if n in defs and id(defs[n]) not in seen]
    parts = always + sorted(seen.values(), key=lambda s: s.lineno)
    modules = set().union(*(_imports(p, pkg) for p in parts)) if parts else set()
    return parts, modules


def stage_code(script: str | Path, pkg: Path = PACKAGE_DIR) -> tuple[dict[str, str], list[str]]:
    """(part -> sha256 of its parsed code, modules) of the stage whose script is `script`, with
    the `cotransfer` package in `pkg`."""
    script = Path(script)
    tree = _parse(script)
    parts = {f"script {script.name}": ast.dump(tree)}
    modules = _imports(tree, pkg) - {STAGES}
    if STAGES in _imports(tree, pkg):
        used, more = _stages_parts(_names(tree), pkg)
        parts["stages.py"] = "\n".join(ast.dump(p) for p in used)
        modules |= more
    modules.discard(STAGES)
    todo, closure = sorted(modules), set()
    while todo:
        m = todo.pop()
        if m in closure or m == STAGES:
            continue
        closure.add(m)
        for f in _module_files(m, pkg):
            todo += sorted(_imports(_parse(f), pkg) - closure)
    files = sorted({f for m in closure for f in _module_files(m, pkg)})
    for f in files:
        parts[f.relative_to(pkg.parent).as_posix()] = ast.dump(_parse(f))
    hashed = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in parts.items()}
    return hashed, sorted(closure)


def code_hash(script: str | Path, pkg: Path = PACKAGE_DIR) -> str:
    """The stage's code hash (16 hex digits): what a rule's `code` param holds."""
    parts, _ = stage_code(str(Path(script).resolve()), Path(pkg).resolve())
    h = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(parts.items())).encode())
    return h.hexdigest()[:16]
