"""tasks.models structure: no import cycle between its modules; architectures apart from weight tags (names,
``arch:tag``, tiny twins, identities of the names that existed before tags, random weights per architecture)."""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tasks.models
from flows.cli.models_cmd import models_app
from tasks.models import calls, registry, weights
from tasks.models.identity import RANDOM_PREFIX, model_identity
from tasks.models.loading import load_wrn50
from tasks.models.registry import Architecture, WeightFile, WeightTag, get_spec

PACKAGE = "tasks.models"
MODELS_DIR = Path(tasks.models.__file__).parent


# -------------------------------------------------------------------------------------------------- import graph
def _imported_modules(node: ast.AST, module: str, package: str, local: set[str]) -> set[str]:
    """The ``package`` modules one import statement names (relative imports resolved; ``from package import x``
    counts when x is a module of the package)."""
    if isinstance(node, ast.Import):
        return {a.name.removeprefix(package + ".").split(".")[0] for a in node.names
                if a.name.startswith(package + ".")} & local
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        parts = (package + "." + module).split(".")[: -node.level]
        base = ".".join(parts + ([base] if base else []))
    if base == package:
        return {a.name for a in node.names} & local
    if base.startswith(package + "."):
        return {base.removeprefix(package + ".").split(".")[0]} & local
    return set()


def import_graph(directory: Path, package: str) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere: top level, inside functions, under TYPE_CHECKING."""
    local = {p.stem for p in directory.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in sorted(local):
        tree = ast.parse((directory / f"{name}.py").read_text())
        graph[name] = set().union(*(_imported_modules(n, name, package, local) for n in ast.walk(tree))) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_models_package_has_no_import_cycle():
    graph = import_graph(MODELS_DIR, PACKAGE)
    assert {"registry", "identity", "loading", "weights", "weight_files", "pull", "sam", "clip"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "pull" not in graph["weights"] and "loading" not in graph["identity"]
    assert all("loading" not in graph[m] for m in ("sam", "grounding_dino", "wrn50", "dinov2", "clip"))
    assert {"sam", "grounding_dino", "wrn50", "dinov2", "clip"} <= graph["loading"]  # builders are explicit


def test_cycle_finder_sees_imports_inside_functions(tmp_path):
    """The checker is not blind: a cycle closed only by a function-level (or relative) import is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkg.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from pkg import c\n    return c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("import pkg.b as other\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["b", "c", "b"]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


# ---------------------------------------------------------------------------------------------- names and tags
LEGACY = {  # every name registered before architectures and tags were split: (architecture, tag)
    "sam-vit-b": ("sam-vit-b", "sa1b"), "sam-vit-l": ("sam-vit-l", "sa1b"), "sam-vit-h": ("sam-vit-h", "sa1b"),
    "gdino-swint-ogc": ("gdino-swint-ogc", "ogc_hf"), "wrn50-2": ("wrn50-2", "racm_in1k"),
    "wrn50-2-tv": ("wrn50-2", "tv_in1k"), "tiny-sam": ("tiny-sam", None), "tiny-gdino": ("tiny-gdino", None),
    "tiny-wrn50": ("tiny-wrn50", None),
}


def test_names_resolve_to_architecture_and_tag():
    for name, (arch, tag) in LEGACY.items():
        spec = get_spec(name)
        assert (spec.name, spec.architecture, spec.tag) == (name, arch, tag)
        if tag:
            assert get_spec(f"{arch}:{tag}") is spec
    assert get_spec("wrn50-2:tv_in1k").files[0].filename == "wide_resnet50_2-95faca4d.pth"
    assert get_spec("clip-vit-b-16-plus-240:laion400m_e32").name == "clip-vit-b-16-plus-240-e32"
    assert get_spec("clip-vit-b-16-plus-240").tag == "laion400m_e31"  # the architecture's name: its default tag
    assert registry.tags_of("clip-vit-b-16-plus-240") == {"laion400m_e31": "clip-vit-b-16-plus-240",
                                                         "laion400m_e32": "clip-vit-b-16-plus-240-e32"}
    with pytest.raises(KeyError, match="racm_in1k, tv_in1k"):
        get_spec("wrn50-2:in22k")
    for bad in ("tiny-sam:x", "nope", "nope:x"):
        with pytest.raises(KeyError, match="registered models"):
            get_spec(bad)


def test_every_model_is_an_architecture_plus_tag():
    for name, spec in registry.MODEL_SPECS.items():
        arch = registry.ARCHITECTURES[spec.architecture]
        assert (spec.family, spec.arch, spec.preprocess, spec.tiny, spec.seed) == \
               (arch.family, arch.arch, arch.preprocess, arch.tiny, arch.seed)
        assert (spec.tag is None) == spec.tiny == (not spec.files)
        if not spec.tiny:  # the stand-in is a tiny architecture of the same family
            twin = registry.ARCHITECTURES[registry.tiny_twin(name)]
            assert twin.tiny and twin.family == spec.family and registry.TINY_TWIN[name] == twin.name
    assert registry.tiny_twin("wrn50-2:tv_in1k") == "tiny-wrn50" and registry.tiny_twin("tiny-clip") is None


def _old_recipe_sha(name: str, arch: dict, extra: dict | None = None) -> str:
    """The seeded-random recipe hash as computed before tags existed (name, arch, seed 0, torch [+ transformers])."""
    recipe = {"name": name, "arch": arch, "seed": 0, "torch": metadata.version("torch"), **(extra or {})}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=list).encode()).hexdigest()


def test_identities_of_existing_names_unchanged(tmp_path, monkeypatch):
    """Cache keys depend on identity dicts: the names that existed keep theirs (written out independently here)."""
    sam_b = dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=(2, 5, 8, 11),
                 image_size=1024, patch_size=16, prompt_embed_dim=256, decoder_mlp_dim=2048, decoder_heads=8,
                 decoder_depth=2)
    gdino = dict(hf_layout=True, backbone="swin-tiny", text_encoder="bert-base-uncased", num_queries=900,
                 max_text_len=256)
    wrn = dict(depth=50, width_factor=2, layers=(3, 4, 6, 3), feature_layers=(1, 2, 3),
               feature_channels=(256, 512, 1024))
    tiny_wrn = dict(depth=10, width_factor=1, layers=(1, 1, 1, 1), feature_layers=(1, 2, 3),
                    feature_channels=(64, 128, 256))
    expected = {
        ("sam-vit-b", True): _old_recipe_sha("sam-vit-b", sam_b),
        ("gdino-swint-ogc", True): _old_recipe_sha("gdino-swint-ogc", gdino,
                                                    {"transformers": metadata.version("transformers")}),
        ("wrn50-2", True): _old_recipe_sha("wrn50-2", wrn),
        ("tiny-wrn50", False): _old_recipe_sha("tiny-wrn50", tiny_wrn),
    }
    for (name, random), sha in expected.items():
        ident = model_identity(name, tmp_path, random_weights=random)
        assert ident.as_dict() == {"name": name, "weights_sha256": RANDOM_PREFIX + sha, "tiny": name.startswith("tiny"),
                                   "random_weights": True}
    # official: the file's sha256, under the registered name, whichever way the name was written
    path = get_spec("wrn50-2-tv").file_path(tmp_path, "wide_resnet50_2-95faca4d.pth")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the real file")
    unsized = dataclasses.replace(get_spec("wrn50-2-tv"), files=(WeightFile(path.name, None, None),))
    monkeypatch.setitem(registry.MODEL_SPECS, "wrn50-2-tv", unsized)  # the registry pins the real file's size
    ident = model_identity("wrn50-2:tv_in1k", tmp_path)
    assert ident.as_dict() == {"name": "wrn50-2-tv", "weights_sha256": hashlib.sha256(b"not the real file").hexdigest(),
                               "tiny": False, "random_weights": False}


def test_random_weights_belong_to_the_architecture(tmp_path):
    for names in (("wrn50-2", "wrn50-2-tv", "wrn50-2:tv_in1k"),
                  ("clip-vit-b-16-plus-240", "clip-vit-b-16-plus-240-e32")):
        idents = {model_identity(n, tmp_path, random_weights=True) for n in names}
        assert len(idents) == 1 and next(iter(idents)).name == names[0]
    assert model_identity("clip-vit-l-14-336", tmp_path, True) != model_identity("clip-vit-b-16-plus-240", tmp_path, True)


@pytest.fixture
def two_tag_arch(monkeypatch):
    """A small wrn50-family architecture with two weight tags, registered for one test."""
    arch = Architecture("t-arch", "wrn50", dict(registry.ARCHITECTURES["tiny-wrn50"].arch),
                        registry.ARCHITECTURES["tiny-wrn50"].preprocess, tiny_twin="tiny-wrn50", seed=5)
    monkeypatch.setitem(registry.ARCHITECTURES, arch.name, arch)
    for tag, name in (("a", "t-arch"), ("b", "t-arch-b")):
        spec = registry.compose(arch, WeightTag("t-arch", tag, name, (WeightFile(f"{tag}.pth", None, None),), "test"))
        monkeypatch.setitem(registry.MODEL_SPECS, name, spec)
    return arch


@pytest.mark.usefixtures("fresh_models")
def test_random_weights_load_once_per_architecture(tmp_path, two_tag_arch):
    first = load_wrn50("t-arch", tmp_path, random_weights=True)
    assert load_wrn50("t-arch:b", tmp_path, random_weights=True) is first
    assert load_wrn50("t-arch-b", tmp_path / "elsewhere", random_weights=True) is first
    assert calls.MODEL_LOADS == {"t-arch": 1}
    assert first.spec.tag is None and first.spec.files == () and first.identity.name == "t-arch"
    with pytest.raises(weights.WeightsMissingError, match="anomflow models pull t-arch-b"):
        load_wrn50("t-arch:b", tmp_path)


def test_import_and_cli_accept_arch_tag(tmp_path, two_tag_arch):
    src = tmp_path / "anything.bin"
    src.write_bytes(b"weights of tag b")
    models = tmp_path / "models"
    assert weights.import_file("t-arch:b", src, models) == [models / "t-arch-b" / "b.pth"]
    runner = CliRunner()
    res = runner.invoke(models_app, ["list", "--models-dir", str(models)])
    assert res.exit_code == 0, res.output
    row = {ln.split()[0]: ln.split() for ln in res.output.splitlines() if ln.strip()}
    assert row["MODEL"][:5] == ["MODEL", "ARCH", "TAG", "FAMILY", "KIND"]
    assert row["t-arch-b"][:5] == ["t-arch-b", "t-arch", "b", "wrn50", "official"]
    assert "present" in " ".join(row["t-arch-b"]) and "MISSING" in " ".join(row["t-arch"])
    assert row["wrn50-2-tv"][:3] == ["wrn50-2-tv", "wrn50-2", "tv_in1k"]
    assert row["tiny-clip"][:3] == ["tiny-clip", "tiny-clip", "-"]
    res = runner.invoke(models_app, ["pull", "tiny-dinov2", "--models-dir", str(models)])
    assert res.exit_code == 0 and "nothing to pull" in res.output
    res = runner.invoke(models_app, ["pull", "wrn50-2:nope", "--models-dir", str(models)])
    assert res.exit_code == 2 and "tv_in1k" in res.output
