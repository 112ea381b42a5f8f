"""The one way to declare a stage: name, version, parameters, models, upstream artifacts, item kind, compute.

    @declare_stage("anomaly_map", 1, params=("fusion", "top_k", "resolution"), upstream=("masks",))
    def anomaly_map(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
        ...                                   # pure: reads only call.params / call.read / call.model / pixels

    result = anomaly_map(ctx, images, params={...}, upstream={"masks": ref})

A declaration is all the engine needs: it builds the stage key (parameters, model identities, upstream keys,
side inputs and the pixel decoding rule when the stage reads pixels), the work items of the declared kind, the
views of the upstream artifacts, and runs the compute through :func:`tasks.engine.runner.run_stage` (in process,
or on Dask workers). Calling the declaration runs it as a Prefect task named after the stage.

Item kinds (``produces``):
  image      one item per image (id = image id, plus side-input hashes when the lineage reads any)
  image_key  one item per (image, extra key), e.g. a caption; ``keys=[...]`` at the call
  set        one item per :class:`ItemSet` (a category's memory bank, a text embedding per prompt set); its id
             hashes the set's name and its members' sorted content hashes. If it fails, every image that
             depends on it fails, with a reason naming the set and the cause.
"""
from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from stores import ArtifactRef, ItemData, item_key
from stores.artifact_store import ArtifactView
from stores.runs import session
from tasks.datasets.image_io import DECODE_RULE, read_image
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.inputs import item_of
from tasks.engine.runner import StageDef, StageResult, WorkItem, per_image, run_stage

KINDS = ("image", "image_key", "set")


@dataclass(frozen=True)
class ItemSet:
    """Members make the item (their content hashes are in its id); dependents fail with it.

    name: what the set is, e.g. ``memory_bank:bottle`` or ``text:bottle:winclip``.
    """

    name: str
    members: tuple[ImageItem, ...]
    dependents: tuple[ImageItem, ...] = ()
    payload: Any = None   # what the compute needs besides the members (prompts, a category name)

    def item(self, side: tuple[str, ...] = ()) -> str:
        return item_key(self.name, *sorted(item_of(m, side) for m in self.members))


@dataclass
class StageCall:
    """What a compute function may read: its parameters, its upstream artifacts, its models, the pixels.

    Built once per process that computes (the driver, or a Dask worker); ``detail`` counts stage-specific
    events (boxes decoded ...) that come back into the run's statistics; ``state`` is per-process scratch
    (a memo) a compute may keep between batches.
    """

    stage: "Stage"
    ctx: RunContext
    params: dict[str, Any]
    models: dict[str, str]
    refs: dict[str, ArtifactRef]
    detail: Counter = field(default_factory=Counter)
    state: dict[str, Any] = field(default_factory=dict)
    _views: dict[str, ArtifactView] = field(default_factory=dict)

    def has(self, role: str) -> bool:
        return role in self.refs

    def view(self, role: str) -> ArtifactView:
        if role not in self._views:
            self._views[role] = self.ctx.store.open(self.refs[role])
        return self._views[role]

    def item_of(self, role: str, image: ImageItem, key: str | None = None) -> str:
        """The id under which upstream ``role`` holds ``image``'s item (and ``key``'s, for image_key stages)."""
        base = item_of(image, self.refs[role].side)
        return item_key(base, key) if key is not None else base

    def read(self, role: str, image: ImageItem, key: str | None = None, names: list[str] | None = None) -> ItemData:
        return self.view(role).read(self.item_of(role, image, key), names)

    def meta(self, role: str, image: ImageItem) -> dict[str, Any]:
        return self.view(role).meta(self.item_of(role, image))

    def model(self, role: str):
        from tasks.models.loading import load_model
        return load_model(self.models[role], self.ctx.models_dir, self.ctx.random_weights, self.ctx.device)

    def pixels(self, image: ImageItem, color_order: str = "rgb"):
        """H x W x 3 uint8, EXIF-upright, verified against the image id; BGR when asked (official SAA)."""
        rgb = read_image(image.record.path, self.ctx.dataset_root, expect_sha256=image.image_id)
        return rgb[..., ::-1].copy() if color_order == "bgr" else rgb


ComputeBatch = Callable[[StageCall, list[WorkItem]], Sequence[ItemData]]


@dataclass(frozen=True)
class Stage:
    """A stage declaration (see the module docstring). ``upstream`` roles ending in ``?`` are optional."""

    name: str
    version: int
    compute: ComputeBatch
    params: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    produces: str = "image"
    side_inputs: tuple[str, ...] = ()
    reads_pixels: bool = False
    key_rule: Callable[[str], str] | None = None   # normalises the extra keys of an image_key stage
    fallbacks: bool = False                          # items may carry meta["fallbacks"] (tasks.engine.fallbacks)
    side_artifacts: Callable[[StageCall], tuple[ArtifactRef, ...]] | None = None   # e.g. a memo it writes
    module: str = ""

    def __reduce__(self):   # pickled by reference (Dask ships declarations to workers)
        return (_declared, (self.module, self.name, self.compute.__name__))

    def __call__(self, ctx: RunContext, images: Sequence[ImageItem] = (), *, params: dict[str, Any] | None = None,
                 models: dict[str, str | None] | None = None, upstream: dict[str, ArtifactRef | None] | None = None,
                 keys: Sequence[str] = (), sets: Sequence[ItemSet] = (), produces_as: str | None = None
                 ) -> StageResult:
        """Run the stage as a Prefect task (named after the artifact). produces_as: the artifact name when one
        declaration makes two artifacts (``refine_boxes`` makes defect_masks and object_masks)."""
        args = (self, ctx, list(images), params or {}, models or {}, upstream or {}, list(keys), list(sets), produces_as)
        # quote: Prefect would otherwise walk every argument (all items, keys and sets) looking for futures
        return execute_stage.with_options(name=produces_as or self.name)(*map(quote, args))

    def run(self, ctx: RunContext, images: Sequence[ImageItem] = (), **kwargs: Any) -> StageResult:
        """The same, without Prefect (library use, tests)."""
        return execute_stage.fn(self, ctx, list(images), kwargs.get("params") or {}, kwargs.get("models") or {},
                                kwargs.get("upstream") or {}, list(kwargs.get("keys", ())),
                                list(kwargs.get("sets", ())), kwargs.get("produces_as"))

    def call_for(self, ctx: RunContext, params: dict[str, Any], models: dict[str, str],
                 upstream: dict[str, ArtifactRef | None]) -> StageCall:
        """Check the call against the declaration (usage errors name the stage) and bind it."""
        declared = {u.rstrip("?"): u.endswith("?") for u in self.upstream}
        problems = []
        if set(params) != set(self.params):
            problems.append(f"parameters {sorted(params)} are not the declared {sorted(self.params)}")
        wanted = {m.rstrip("?"): m.endswith("?") for m in self.models}
        models = {m: n for m, n in models.items() if n is not None}
        if set(models) - wanted.keys() or [m for m, optional in wanted.items() if not optional and m not in models]:
            problems.append(f"models {sorted(models)} are not the declared {sorted(self.models)}")
        if set(upstream) - declared.keys():
            problems.append(f"undeclared upstream {sorted(set(upstream) - declared.keys())}")
        missing = [r for r, optional in declared.items() if not optional and upstream.get(r) is None]
        if missing:
            problems.append(f"missing upstream {missing}")
        if problems:
            raise TypeError(f"stage {self.name}: " + "; ".join(problems))
        refs = {r: upstream[r] for r in declared if upstream.get(r) is not None}
        return StageCall(self, ctx, dict(params), dict(models), refs)

    def definition(self, call: StageCall, name: str | None = None) -> StageDef:
        from tasks.models.identity import model_identity
        key_params = {**call.params, **({"decode": DECODE_RULE} if self.reads_pixels else {})}
        identities = tuple(model_identity(call.models[m], call.ctx.models_dir, call.ctx.random_weights).as_dict()
                           for m in (m.rstrip("?") for m in self.models) if m in call.models)
        return StageDef(name or self.name, self.version, key_params, identities, tuple(call.refs.values()),
                        self.side_inputs)

    def work(self, stage: StageDef, images: list[ImageItem], keys: Sequence[str],
             sets: Sequence[ItemSet]) -> list[WorkItem]:
        if self.produces == "image":
            return per_image(images, stage)
        if self.produces == "image_key":
            rule = self.key_rule or (lambda k: k)
            # key-major: a batch holds several images of one key (one caption -> one batched forward)
            return [WorkItem(item_key(item_of(i, stage.side), rule(k)), i.image_id, (i, rule(k)))
                    for k in dict.fromkeys(keys) for i in images]
        return [WorkItem(s.item(stage.side), "", s, tuple(d.image_id for d in s.dependents),
                         f"set {s.name} ({len(s.members)} members)") for s in sets]


def _declared(module: str, name: str, function: str) -> Stage:
    found = getattr(importlib.import_module(module), function)
    if not isinstance(found, Stage) or found.name != name:
        raise LookupError(f"{module}.{function} is not the declaration of stage {name}")
    return found


def declare_stage(name: str, version: int, *, params: Sequence[str] = (), models: Sequence[str] = (),
                  upstream: Sequence[str] = (), produces: str = "image", side_inputs: Sequence[str] = (),
                  reads_pixels: bool = False, key_rule: Callable[[str], str] | None = None,
                  fallbacks: bool = False,
                  side_artifacts: Callable[[StageCall], tuple[ArtifactRef, ...]] | None = None
                  ) -> Callable[[ComputeBatch], Stage]:
    """Decorator: turn a pure compute function into a :class:`Stage` declaration."""
    if produces not in KINDS:
        raise ValueError(f"stage {name}: produces must be one of {KINDS}, not {produces!r}")

    def wrap(compute: ComputeBatch) -> Stage:
        return Stage(name, version, compute, tuple(params), tuple(models), tuple(upstream), produces,
                     tuple(side_inputs), reads_pixels, key_rule, fallbacks, side_artifacts, compute.__module__)
    return wrap


@task(cache_policy=NO_CACHE, persist_result=False)
def execute_stage(stage: Stage, ctx: RunContext, images: list[ImageItem], params: dict[str, Any],
                  models: dict[str, str], upstream: dict[str, ArtifactRef | None], keys: list[str],
                  sets: list[ItemSet], produces_as: str | None = None) -> StageResult:
    """Bind, key, enumerate the work, and run it (see :func:`tasks.engine.runner.run_stage`)."""
    from tasks.engine.fallbacks import with_fallbacks
    call = stage.call_for(ctx, params, models, upstream)
    definition = stage.definition(call, produces_as)
    work = stage.work(definition, images, keys, sets)
    result = run_stage(ctx.store, definition, work, call, ctx.batch_size, ctx.progress, ctx.run_id,
                       executor=ctx.executor)
    if stage.side_artifacts:
        result.side_refs = stage.side_artifacts(call)
        run = session(ctx.run_id)
        for ref in result.side_refs:     # a warm run names them too, so gc keeps what its runs use
            if run is not None:
                run.announce(f"{ref.stage}/{ref.key}")
    return with_fallbacks(ctx.store, result, work) if stage.fallbacks else result
