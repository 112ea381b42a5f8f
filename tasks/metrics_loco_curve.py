"""MVTec LOCO sPRO / FPR curve, streamed over the test images, as the official evaluation builds it.

Behaviour carried over from MVTec's ``mvtec_loco_ad_evaluation`` (``src/image.py``, ``metrics.py``,
``aggregation.py``, ``util.py``):

- A pixel is predicted anomalous at threshold t when ``map > t`` (strictly greater).
- FPR(t) = predicted pixels outside every defect channel / pixels outside every channel, both summed
  over the evaluated images (a good image has no channel, so all its pixels count).
- sPRO(t) = mean over all channels of ``min(|pred_t & channel| / saturation_area, 1)``; a pixel in two
  overlapping channels counts for both and is never a false positive.
- Start set: ``max + 1e-6``, 48 scores at equidistant indices of the sorted pooled scores, ``min - 1e-6``
  (descending), pooled from every image, subsampled to 10 M scores when there are more.
- Refinement (``binary_refinement``, script version 2.0): on the curve over *all* images (both
  anomaly kinds together), an adjacent pair is a candidate when it is farther apart than
  ``curve_max_distance`` in (sPRO, FPR) and its triangle 0.5 dsPRO dFPR exceeds 0.25 x that distance
  squared; the 100 farthest are split, with extra points spread by distance to reach 20 new
  thresholds per step; at most 10 steps. The logical / structural curves are then read at these
  shared thresholds.
- AUsPRO: see ``tasks.metrics_loco.auc_spro``.

Streaming: images are read one at a time, once per pass; a pass costs one sort of each image's
defect-free pixels (and of each channel's pixels) and a binary search per threshold. Passes: 1 (start
set) + 1 (start curve) + at most ``max_steps`` refinement steps = at most 12 with the official
settings; each result reports its count.
Peak memory: one image (map, masks, masked copies) + per-kind accumulators of O(thresholds) each + the
start-set sample (at most 2 x ``max_sampled_scores`` scores, independent of the number of images) + one
float score per image. No per-image or per-channel state is kept across images.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("good", "logical_anomalies", "structural_anomalies")
ANOMALY_KINDS = KINDS[1:]
START_EPSILON = 1e-6          # official: the start set reaches past the extreme scores by this much
START_THRESHOLDS = 50         # official start-set size
MAX_SAMPLED_SCORES = 10_000_000
MIN_QUERIES_PER_STEP, MAX_QUERIES_PER_STEP, MAX_STEPS = 20, 100, 10


def saturation_area(defect_area: int, threshold: float, relative: bool) -> int:
    """Pixels of a defect that must be covered for sPRO 1, rounded as the official code does.

    relative: ``int(threshold * defect_area)`` (float product truncated toward zero; threshold in (0, 1]);
    absolute: ``min(threshold, defect_area)`` with ``threshold`` a whole number of pixels. Can return 0
    for a tiny relative defect; :class:`DefectChannel` refuses such a channel.
    """
    defect_area = int(defect_area)
    if defect_area < 0:
        raise ValueError(f"defect area must be >= 0 pixels, got {defect_area}")
    if relative:
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"relative saturation threshold must be in (0, 1], got {threshold}")
        return int(float(threshold) * defect_area)
    if float(threshold) != int(threshold) or int(threshold) < 1:
        raise ValueError(f"absolute saturation threshold must be a whole number of pixels >= 1, "
                         f"got {threshold}")
    return min(int(threshold), defect_area)


@dataclass(frozen=True)
class DefectChannel:
    """One defect of an anomalous image: ``mask`` H x W bool, ``saturation_area`` int pixels (1..area)."""

    mask: np.ndarray
    saturation_area: int


@dataclass(frozen=True)
class LocoImage:
    """One evaluated test image.

    kind: ``good`` | ``logical_anomalies`` | ``structural_anomalies``; anomaly_map: H x W real (full
    image resolution; sizes may differ between images); channels: the defects (empty for good images,
    at least one otherwise); score: the image score for the image AUROC (None: max of the map, as the
    official script); name: shown in error messages.
    """

    kind: str
    anomaly_map: np.ndarray
    channels: tuple[DefectChannel, ...] = ()
    score: float | None = None
    name: str = ""


def _checked(image: object, position: int) -> LocoImage:
    """Validate one image; every error names it and says what is wrong."""
    label = f"image #{position}"
    if not isinstance(image, LocoImage):
        raise TypeError(f"{label}: expected a LocoImage, got {type(image).__name__}")
    label = f"image #{position} ({image.name})" if image.name else label
    if image.kind not in KINDS:
        raise ValueError(f"{label}: kind {image.kind!r} is not one of {', '.join(KINDS)}")
    values = image.anomaly_map
    if not isinstance(values, np.ndarray) or values.ndim != 2 or values.size == 0:
        raise ValueError(f"{label}: anomaly map must be a non-empty 2-D array (H x W)")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"{label}: anomaly map must hold real numbers, got dtype {values.dtype}")
    if not np.isfinite(values).all():
        raise ValueError(f"{label}: anomaly map holds NaN or infinite values")
    if image.kind == "good" and image.channels:
        raise ValueError(f"{label}: a good image must have no defect channels, got {len(image.channels)}")
    if image.kind != "good" and not image.channels:
        raise ValueError(f"{label}: an anomalous image ({image.kind}) needs at least one defect channel")
    for k, channel in enumerate(image.channels):
        mask = channel.mask
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != values.shape:
            raise ValueError(f"{label}, channel {k}: mask must be a bool array of the map's shape "
                             f"{values.shape}, got {getattr(mask, 'dtype', type(mask).__name__)} "
                             f"{getattr(mask, 'shape', '')}")
        area = int(mask.sum())
        sat = channel.saturation_area
        if isinstance(sat, bool) or not isinstance(sat, (int, np.integer)) or not 1 <= sat <= area:
            raise ValueError(f"{label}, channel {k}: saturation area must be an integer in 1..{area} (the "
                             f"defect area), got {sat!r}; an empty defect or a saturation area of 0 would "
                             "divide by zero (the official script then yields NaN sPROs)")
    if image.score is not None and not np.isfinite(float(image.score)):
        raise ValueError(f"{label}: image score must be finite, got {image.score}")
    return image


ImageSource = Sequence[LocoImage] | Callable[[], Iterable[LocoImage]]


class MapPasses:
    """Reads an image source in passes, validating every image, and counts the passes.

    images: a re-iterable (list, tuple, ...) or a zero-argument callable returning a fresh iterable of
    :class:`LocoImage` on every call (so maps can be loaded lazily, one at a time). A one-shot iterator
    is refused: the curve needs several passes. Every pass must yield the same number of images.
    """

    def __init__(self, images: ImageSource) -> None:
        if not callable(images) and iter(images) is images:
            raise TypeError("images is a one-shot iterator, but the sPRO curve reads the maps several times; "
                            "pass a list or a function that returns a fresh iterator on each call")
        self._images = images
        self.passes = 0
        self._count: int | None = None

    def __iter__(self) -> Iterator[LocoImage]:
        self.passes += 1
        source = self._images() if callable(self._images) else self._images
        position = -1
        for position, image in enumerate(source):
            yield _checked(image, position)
        if self._count is None:
            self._count = position + 1
        elif self._count != position + 1:
            raise ValueError(f"the image source yielded {position + 1} images on pass {self.passes} but "
                             f"{self._count} on the first; it must yield the same images on every pass")


def _count_greater(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """values: any shape, real; thresholds: T float64 -> T int64, #(values > threshold). One sort of
    the values (in float64, exact for float32 maps), then a binary search per threshold."""
    ordered = np.sort(values, axis=None).astype(np.float64, copy=False)
    return ordered.size - np.searchsorted(ordered, thresholds, side="right")


@dataclass
class KindTotals:
    """Sums over the images of one kind, per threshold (T = number of thresholds).

    false_positives: T int64, predicted pixels outside every channel; spro_sums: T float64, sum over the
    channels of their sPRO; defect_free: pixels outside every channel; channels, images: counts.
    """

    false_positives: np.ndarray
    spro_sums: np.ndarray
    defect_free: int = 0
    channels: int = 0
    images: int = 0


def totals_at(images: ImageSource | MapPasses, thresholds: Sequence[float]) -> dict[str, KindTotals]:
    """One pass over the images: per kind, FP pixels and summed channel sPROs at each threshold.

    thresholds: T finite floats, any order. Returns ``{kind: KindTotals}`` for all
    three kinds, arrays aligned with ``thresholds`` as given.
    """
    passes = images if isinstance(images, MapPasses) else MapPasses(images)
    queried = np.asarray(thresholds, dtype=np.float64).ravel()
    if not np.isfinite(queried).all():
        raise ValueError("thresholds must be finite numbers")
    totals = {kind: KindTotals(np.zeros(queried.size, np.int64), np.zeros(queried.size)) for kind in KINDS}
    for image in passes:
        values = image.anomaly_map
        total = totals[image.kind]
        if image.channels:
            in_defect = np.logical_or.reduce([c.mask for c in image.channels])
            free_values = values[~in_defect]
        else:
            free_values = values
        total.false_positives += _count_greater(free_values, queried)
        total.defect_free += free_values.size
        for channel in image.channels:
            covered = _count_greater(values[channel.mask], queried)
            total.spro_sums += np.minimum(covered / int(channel.saturation_area), 1.0)
        total.channels += len(image.channels)
        total.images += 1
    return totals


def curve_of(totals: dict[str, KindTotals], kinds: Sequence[str] = KINDS) -> tuple[np.ndarray, np.ndarray]:
    """FPR and mean sPRO (T float64 each) over the images of ``kinds``; ValueError when undefined."""
    chosen = [totals[kind] for kind in kinds]
    defect_free = sum(t.defect_free for t in chosen)
    channels = sum(t.channels for t in chosen)
    if defect_free == 0:
        raise ValueError(f"no defect-free pixel in the {'/'.join(kinds)} images: the FPR is undefined")
    if channels == 0:
        raise ValueError(f"no defect channel in the {'/'.join(kinds)} images: the sPRO is undefined")
    false_positives = sum(t.false_positives for t in chosen)
    return false_positives / defect_free, sum(t.spro_sums for t in chosen) / channels


def spro_curve_at(images: ImageSource, thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, spro), T float64 each, over all given images at ``thresholds`` (T floats, order kept).

    One pass over the maps. ValueError when no pixel is defect-free or no image has a channel.
    """
    return curve_of(totals_at(images, thresholds))


class _ScoreSample:
    """Uniform per-image subsample of all scores, as the official start set draws it: every score when
    there are at most ``cap`` in total, else ``min(pixels, cap // images)`` per image. Earlier images
    are cut down lazily (a subsample of a subsample is a subsample), so at most 2 x cap are held."""

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap, self.rng = cap, rng
        self.parts: list[np.ndarray] = []
        self.total = self.held = 0

    def add(self, values: np.ndarray) -> None:
        self.parts.append(np.array(values, copy=True).ravel())
        self.total += values.size
        self.held += values.size
        if self.held > 2 * self.cap:
            self._shrink()

    def _shrink(self) -> None:
        quota = max(1, self.cap // len(self.parts))
        self.parts = [p if p.size <= quota else self.rng.choice(p, size=quota, replace=False)
                      for p in self.parts]
        self.held = sum(p.size for p in self.parts)

    def sorted_scores(self) -> np.ndarray:
        if self.total > self.cap:
            self._shrink()
        return np.sort(np.concatenate(self.parts)).astype(np.float64)


@dataclass(frozen=True)
class StartSet:
    """Result of the first pass: ``thresholds`` (T float64, strictly descending), ``scores`` (per kind,
    the image scores in reading order), ``channels`` (per kind, defect channels), ``sampled_scores``
    (how many scores the start set was drawn from)."""

    thresholds: np.ndarray
    scores: dict[str, list[float]]
    channels: dict[str, int]
    sampled_scores: int


def start_thresholds(images: ImageSource | MapPasses, num_thresholds: int = START_THRESHOLDS,
                     max_sampled_scores: int = MAX_SAMPLED_SCORES, seed: int = 0) -> StartSet:
    """First pass: the official start set of thresholds, and the image scores (max of map unless given).

    The official script draws its subsample at random; here the draw is seeded (``seed``), so a run is
    reproducible. Duplicate scores (tied maps) are dropped so the thresholds are strictly descending
    (the official code asserts they are distinct).
    """
    passes = images if isinstance(images, MapPasses) else MapPasses(images)
    sample = _ScoreSample(int(max_sampled_scores), np.random.default_rng(seed))
    scores: dict[str, list[float]] = {kind: [] for kind in KINDS}
    channels = dict.fromkeys(KINDS, 0)
    low, high = np.inf, -np.inf
    for image in passes:
        values = image.anomaly_map
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        sample.add(values)
        scores[image.kind].append(float(values.max()) if image.score is None else float(image.score))
        channels[image.kind] += len(image.channels)
    if sample.total == 0:
        raise ValueError("no images to evaluate")
    pooled = sample.sorted_scores()
    picks = np.linspace(0, pooled.size - 1, num=num_thresholds, endpoint=True, dtype=int)[1:-1]
    top, bottom = high + START_EPSILON, low - START_EPSILON
    top = top if top > high else float(np.nextafter(high, np.inf))       # huge scores: eps is below one ulp
    bottom = bottom if bottom < low else float(np.nextafter(low, -np.inf))
    thresholds = np.unique(np.concatenate([[bottom], pooled[picks], [top]]))[::-1].copy()
    return StartSet(thresholds, scores, channels, int(pooled.size))


def refinement_candidates(spro: np.ndarray, fpr: np.ndarray, max_distance: float,
                          area_condition: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent curve points the official refinement still splits, farthest first.

    spro, fpr: T float64 in descending threshold order. A pair (i, i + 1) is a candidate when its
    Euclidean distance in (sPRO, FPR) exceeds ``max_distance`` and, with ``area_condition`` (script
    version 2.0; older copies of the script have no such rule), the triangle 0.5 x dsPRO x dFPR
    exceeds 0.25 x max_distance**2, so a pure jump in one coordinate (a tie of many scores) is not
    split forever. Returns (i: C int, in decreasing distance with ties in curve order; distance: C
    float64).
    """
    d_spro, d_fpr = np.diff(spro), np.diff(fpr)
    distances = np.sqrt(d_spro ** 2 + d_fpr ** 2)
    split = distances > max_distance
    if area_condition:
        split &= 0.5 * d_spro * d_fpr > 0.25 * max_distance ** 2
    far = np.flatnonzero(split)
    far = far[np.argsort(-distances[far], kind="stable")]
    return far, distances[far]


def refinement_queries(thresholds: np.ndarray, spro: np.ndarray, fpr: np.ndarray, max_distance: float,
                       area_condition: bool = True, min_queries: int = MIN_QUERIES_PER_STEP,
                       max_queries: int = MAX_QUERIES_PER_STEP) -> np.ndarray:
    """New thresholds for one official refinement step (empty when no pair is a candidate).

    thresholds: T float64 descending, with the curve's ``spro`` and ``fpr`` (T float64). The
    ``max_queries`` farthest candidates (:func:`refinement_candidates`) each get 1 + extra evenly spaced
    inner thresholds; ``min_queries - candidates`` extra points (if positive) are shared out in
    candidate order, each taking round(its distance / distance not yet served x points left) with
    ``np.round`` (half to even). Returns the new thresholds not already present, ascending.
    """
    far, distances = refinement_candidates(spro, fpr, max_distance, area_condition)
    far, distances = far[:max_queries], distances[:max_queries]
    remaining = max(min_queries - far.size, 0)
    unserved = sum(float(d) for d in distances)
    queries = []
    for i, distance in zip(far, distances.tolist()):
        extra = int(np.round(distance / unserved * remaining))
        queries.append(np.linspace(thresholds[i], thresholds[i + 1], num=3 + extra)[1:-1])
        remaining -= extra
        unserved -= distance
    if not queries:
        return np.zeros(0)
    new = np.unique(np.concatenate(queries))
    return new[~np.isin(new, thresholds)]   # adjacent floats leave no room between them


@dataclass(frozen=True)
class RefinedCurve:
    """The refined thresholds (T float64, descending) with per-kind totals aligned to them, the number
    of refinement steps run, whether the refinement ended with no candidate left (rather than at the
    step limit), and the largest adjacent distance left on the all-images curve."""

    thresholds: np.ndarray
    totals: dict[str, KindTotals]
    steps: int
    converged: bool
    max_adjacent_distance: float


def refine_thresholds(images: ImageSource | MapPasses, start: np.ndarray, curve_max_distance: float = 0.01,
                      area_condition: bool = True, max_steps: int = MAX_STEPS,
                      min_queries: int = MIN_QUERIES_PER_STEP,
                      max_queries: int = MAX_QUERIES_PER_STEP) -> RefinedCurve:
    """The official adaptive refinement: one pass at ``start`` (T0 float64, descending), then one pass
    per step (at most ``max_steps``) at the new thresholds, on the curve over all images."""
    if not curve_max_distance > 0:
        raise ValueError(f"curve_max_distance must be > 0, got {curve_max_distance}")
    passes = images if isinstance(images, MapPasses) else MapPasses(images)
    thresholds = np.asarray(start, dtype=np.float64)
    if thresholds.size < 2 or not (np.diff(thresholds) < 0).all():
        raise ValueError("start thresholds must be at least two strictly descending values")
    totals = totals_at(passes, thresholds)
    steps = 0
    while True:
        fpr, spro = curve_of(totals)
        queries = refinement_queries(thresholds, spro, fpr, curve_max_distance, area_condition,
                                     min_queries, max_queries)
        if queries.size == 0 or steps >= max_steps:
            left = refinement_candidates(spro, fpr, curve_max_distance, area_condition)[0].size
            gap = float(np.sqrt(np.diff(spro) ** 2 + np.diff(fpr) ** 2).max())
            return RefinedCurve(thresholds, totals, steps, left == 0, gap)
        added = totals_at(passes, queries)
        thresholds = np.concatenate([thresholds, queries])
        order = np.argsort(-thresholds, kind="stable")
        thresholds = thresholds[order]
        totals = {kind: KindTotals(np.concatenate([old.false_positives, added[kind].false_positives])[order],
                                   np.concatenate([old.spro_sums, added[kind].spro_sums])[order],
                                   old.defect_free, old.channels, old.images)
                  for kind, old in totals.items()}
        steps += 1
