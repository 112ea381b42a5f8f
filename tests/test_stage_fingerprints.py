"""Guard: a stage whose code changed must bump its version, or it would reuse caches made by the old code."""
from __future__ import annotations

import json

from tests.stage_fingerprints import RECORD, _code_only, fingerprints


def test_every_changed_stage_bumped_its_version():
    recorded = json.loads(RECORD.read_text())
    current = fingerprints()
    assert current, "no stage functions found"
    stale = [name for name, fp in current.items() if name in recorded
             and (fp["sha256"] != recorded[name]["sha256"]
                  or fp["deps_sha256"] != recorded[name].get("deps_sha256", fp["deps_sha256"]))
             and fp["versions"] == recorded[name]["versions"]]
    assert not stale, (f"stage code changed without a version bump: {stale}. Bump the StageDef version (its old "
                       "cache is wrong for the new code), then run: python -m tests.stage_fingerprints --update")
    unrecorded = sorted(set(current) - set(recorded)) + [n for n, fp in current.items() if n in recorded
                                                          and fp != recorded[n]]
    assert not unrecorded, ("record new or re-versioned stages: python -m tests.stage_fingerprints --update "
                            f"({unrecorded})")


def test_the_fingerprint_sees_code_but_not_comments_or_docstrings():
    import ast

    plain = ast.parse("def f(x):\n    return x + 1\n").body[0]
    commented = ast.parse('def f(x):\n    """Adds one."""\n    # the answer\n    return x + 1\n').body[0]
    changed = ast.parse("def f(x):\n    return x + 2\n").body[0]
    assert _code_only(plain) == _code_only(commented) != _code_only(changed)
