"""Fingerprints of every stage's source, so that an edit cannot silently reuse caches made by the old code.

A stage's fingerprint is the sha256 of its function's syntax tree plus the trees of every module-level function
or class of its own module that it reaches by name (transitively); comments, docstrings and layout do not count.
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
                 "tasks/report/evaluation_stage.py", "tasks/probe/linear_probe.py")


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


def fingerprints() -> dict[str, dict]:
    """``module:function`` -> {"versions": [...], "sha256": ...} for every stage function."""
    found: dict[str, dict] = {}
    for rel in STAGE_MODULES:
        source = (ROOT / rel).read_text()
        tree = ast.parse(source)
        top = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for name, node in top.items():
            if not _is_stage(node):
                continue
            reached, todo = set(), [name]
            while todo:                      # module-level helpers it reaches by name, transitively
                current = todo.pop()
                if current in reached:
                    continue
                reached.add(current)
                todo += [n.id for n in ast.walk(top[current]) if isinstance(n, ast.Name) and n.id in top]
            text = "\n".join(_code_only(top[n]) for n in sorted(reached))
            found[f"{rel}:{name}"] = {"versions": _versions(node),
                                      "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return found


if __name__ == "__main__":
    if "--update" not in sys.argv:
        sys.exit("usage: python -m tests.stage_fingerprints --update   (after bumping the versions of changed stages)")
    RECORD.write_text(json.dumps(fingerprints(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(fingerprints())} stage fingerprints in {RECORD}")
