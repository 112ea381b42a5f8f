"""Fingerprints of every stage's source, so that an edit cannot silently reuse caches made by the old code.

A stage's fingerprint is the sha256 of its function's syntax tree plus the trees of every module-level function
or class of its own module that it reaches by name (transitively), and a second sha256 over what it reaches in
other project modules (``tasks/``, ``stores/``: imported functions, ``module.function``); comments, docstrings
and layout do not count.
A stage is a function decorated with ``@declare_stage(name, version, ...)`` (its version is the decorator's second
argument), or one that builds a ``StageDef(name, version, ...)`` itself (the SAM decode memo).
``tests/stage_fingerprints.json`` records both; the test fails when a fingerprint changes while the versions stay
the same (bump the version: the old cache is wrong for the new code), and asks for
``python -m tests.stage_fingerprints --update`` once the versions were bumped.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).with_name("stage_fingerprints.json")
STAGE_MODULES = ("tasks/stages/sam.py", "tasks/stages/grounding_dino.py", "tasks/stages/sam_memo.py",
                 "tasks/saa/stages.py", "tasks/saa_plus/stages.py", "tasks/saa_plus/oracle.py",
                 "tasks/stages/sam_auto.py", "tasks/stages/features.py", "tasks/stages/clip.py",
                 "tasks/report/evaluation_stage.py", "tasks/probe/linear_probe.py",
                 "tasks/report/loco_evaluation_stage.py", "tasks/sam_lad/stages_bank.py",
                 "tasks/sam_lad/stages_objects.py", "tasks/sam_lad/stages_match.py",
                 "tasks/report/figures_stage.py", "tasks/decisions/stage.py",
                 "tasks/validation/stats_stages.py", "tasks/validation/gx_stage.py")
PROJECT_PACKAGES = ("tasks", "stores")   # code in these is followed across modules


def _declarations(node: ast.AST) -> list[ast.Call]:
    """The ``declare_stage(...)`` decorators of a function, and the ``StageDef(...)`` calls in its body."""
    if not isinstance(node, ast.FunctionDef):
        return []
    found = [d for d in node.decorator_list if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "declare_stage"]
    return found + [c for c in ast.walk(node) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "StageDef"]


def _is_stage(node: ast.AST) -> bool:
    return bool(_declarations(node))


def _versions(node: ast.FunctionDef) -> list[int]:
    out = []
    for call in _declarations(node):
        arg = call.args[1] if len(call.args) >= 2 else next((k.value for k in call.keywords if k.arg == "version"), None)
        out.append(arg.value if isinstance(arg, ast.Constant) else -1)
    return sorted(out)


def _code_only(node: ast.AST) -> str:
    """The node's syntax tree as text, without docstrings (comments and layout are not in the tree)."""
    node = copy.deepcopy(node)
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            n.body = body[1:] or [ast.Pass()]
    return ast.dump(node, include_attributes=False)


def _module(rel: str) -> tuple[dict[str, ast.AST], dict[str, str], dict[str, tuple[str, str]]]:
    """A project module's top-level functions/classes, its imported project modules (alias -> file) and its
    imported project functions (name -> (file, name))."""
    tree = ast.parse((ROOT / rel).read_text())
    top = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    modules: dict[str, str] = {}
    names: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT_PACKAGES:
            base = node.module.replace(".", "/")
            for alias in node.names:
                as_module = f"{base}/{alias.name}.py"
                if (ROOT / as_module).is_file():
                    modules[alias.asname or alias.name] = as_module
                elif (ROOT / f"{base}.py").is_file():
                    names[alias.asname or alias.name] = (f"{base}.py", alias.name)
    return top, modules, names


def _reach(rel: str, name: str, cache: dict) -> set[tuple[str, str]]:
    """(file, name) of every function/class a stage reaches: by name in its module, through imported project
    functions, and through ``module.function`` on imported project modules (transitively)."""
    reached: set[tuple[str, str]] = set()
    todo = [(rel, name)]
    while todo:
        current = todo.pop()
        if current in reached:
            continue
        if current[0] not in cache:
            cache[current[0]] = _module(current[0])
        top, modules, names = cache[current[0]]
        if current[1] not in top:
            continue
        reached.add(current)
        for n in ast.walk(top[current[1]]):
            if isinstance(n, ast.Name) and n.id in top:
                todo.append((current[0], n.id))
            elif isinstance(n, ast.Name) and n.id in names:
                todo.append(names[n.id])
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules:
                todo.append((modules[n.value.id], n.attr))
    return reached


def fingerprints() -> dict[str, dict]:
    """``module:function`` -> {"versions": [...], "sha256": own module's code, "deps_sha256": the code it reaches
    in other project modules} for every stage function."""
    found: dict[str, dict] = {}
    cache: dict = {}
    for rel in STAGE_MODULES:
        top, _, _ = cache.setdefault(rel, _module(rel))
        for name, node in top.items():
            if not _is_stage(node):
                continue
            reached = _reach(rel, name, cache)
            own = "\n".join(_code_only(cache[f][0][n]) for f, n in sorted(reached) if f == rel)
            deps = "\n".join(f"{f}:{n}\n" + _code_only(cache[f][0][n]) for f, n in sorted(reached) if f != rel)
            found[f"{rel}:{name}"] = {"versions": _versions(node),
                                      "sha256": hashlib.sha256(own.encode()).hexdigest(),
                                      "deps_sha256": hashlib.sha256(deps.encode()).hexdigest()}
    return found


if __name__ == "__main__":
    if "--update" not in sys.argv:
        sys.exit("usage: python -m tests.stage_fingerprints --update   (after bumping the versions of changed stages)")
    RECORD.write_text(json.dumps(fingerprints(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(fingerprints())} stage fingerprints in {RECORD}")
