"""Streaming pixel metrics: the values of ``tasks.metrics.pixel_metrics`` in bounded memory.

``metrics.pixel_metrics`` stacks the N maps of a category and argsorts every pixel, so its peak
memory grows with N. Here each (map, mask) pair is read once, in two passes:

1. Spill: label the image's 8-connected defect components, sort its pixels by descending score
   and append that sorted *run* to a temporary file (records of key = -score, ascending, and
   area = size of the pixel's component, 0 for a normal pixel).
2. Merge: a block k-way merge over the runs. Each step holds at most B = max(1, budget // runs)
   records per run; the pivot is the largest last key (lowest score) of those buffers, and every
   record with key <= pivot is taken from every run, including any records past a buffer that
   tie with the pivot. So no tie group is split between steps, and sweeping the step's distinct
   scores in order gives exactly the TP / FP / PRO-gain counts of one global ranking.

Same definitions as metrics.py: ties enter together, AUROC = trapezoid of the ROC curve,
AP = sum_k (R_k - R_{k-1}) P_k, F1 = 2TP / (2TP + FP + FN), and each pixel of component c adds
1 / (n_components * area_c) to PRO, whose trapezoid area up to an FPR limit (interpolated at the
limit) is divided by that limit. Results differ from metrics.py only in summation order.

Curves (``stream_pixel_metrics_and_curves``): the sweep also keeps a subset of its exact curve points, the first
point of each new bucket of FPR (fine up to FPR 0.3, where PRO is read), recall or PRO, so a category keeps a few
hundred points however many pixels it has (:class:`CurveSampler`).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import BinaryIO

import numpy as np

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")

# One spilled pixel: key = -score (runs ascend in key), area = its component's size (0: normal).
RECORD = np.dtype([("key", "<f8"), ("area", "<u4")])
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity within one image


def aupro_key(limit: float) -> str:
    """Result key of the AUPRO up to ``limit``, e.g. 0.05 -> 'pixel_aupro@0.05', 1 -> 'pixel_aupro@1.0'."""
    return f"pixel_aupro@{float(limit)}"


class _Run:
    """One image's records in the spill file: ``start`` and ``length`` in records; ``cursor`` is
    the next record (within the run) not yet read; ``buf`` holds read, unmerged records (<= B)."""

    __slots__ = ("start", "length", "cursor", "buf")

    def __init__(self, start: int, length: int) -> None:
        self.start, self.length, self.cursor = start, length, 0
        self.buf = np.empty(0, dtype=RECORD)

    @property
    def unread(self) -> int:
        return self.length - self.cursor

    def read(self, fh: BinaryIO, count: int) -> np.ndarray:
        """The next ``count`` records (count <= unread) as a RECORD array; advances the cursor."""
        fh.seek((self.start + self.cursor) * RECORD.itemsize)
        out = np.fromfile(fh, dtype=RECORD, count=count)
        if out.size != count:
            raise OSError("spill file is shorter than expected")
        self.cursor += count
        return out


def _spill(pairs: Iterable[tuple[np.ndarray, np.ndarray]], fh: BinaryIO) -> tuple[list[_Run], int, int, int]:
    """Pass 1: write each image as a run of records sorted by descending score.

    pairs: (map H_i x W_i float, mask H_i x W_i bool) per image. Returns (runs, n_pos, n_neg,
    n_components) over all images; components are counted per image and summed.
    """
    runs: list[_Run] = []
    n_pos = n_neg = n_components = start = 0
    for score_map, mask in pairs:
        score_map, mask = np.asarray(score_map), np.asarray(mask)
        if score_map.shape != mask.shape or score_map.ndim != 2:
            raise ValueError(f"expected H x W map and mask of one shape, got {score_map.shape} and {mask.shape}")
        if not np.issubdtype(score_map.dtype, np.floating):
            score_map = score_map.astype(np.float32)  # as metrics._as_stack
        if not np.all(np.isfinite(score_map)):
            raise ValueError("anomaly maps contain NaN or infinite values")
        if score_map.size >= 2**32:
            raise ValueError("an image with 2**32 or more pixels is not supported")
        from scipy import ndimage   # imported when needed: a warm run never labels components
        labels, count = ndimage.label(mask.astype(bool, copy=False), structure=_EIGHT)
        area = np.bincount(labels.ravel(), minlength=count + 1)
        area[0] = 0  # background: normal pixels
        keys = -score_map.ravel().astype(np.float64)  # float64 holds any float map exactly
        order = np.argsort(keys)  # order within ties is irrelevant: tie groups enter together
        records = np.empty(keys.size, dtype=RECORD)
        records["key"] = keys[order]
        records["area"] = area[labels.ravel()[order]]
        records.tofile(fh)
        positives = int(np.count_nonzero(labels))
        n_pos, n_neg, n_components = n_pos + positives, n_neg + keys.size - positives, n_components + count
        if keys.size:
            runs.append(_Run(start, keys.size))
        start += keys.size
    fh.flush()
    return runs, n_pos, n_neg, n_components


class CurveSampler:
    """Keeps, from a sweep of monotone non-decreasing curve columns given in chunks, the first point of every new
    bucket (``floor(column * buckets[column])``; ``fpr`` is bucketed finely on [0, 0.3]) and the final point.

    buckets: {column: buckets over [0, 1]}; at most sum(buckets) + 250 (fine FPR) + 2 points are kept.
    Other columns passed to :meth:`add` (precision) ride along at the kept points.
    """

    FINE_FPR = (0.3, 250)   # up to FPR 0.3 (the AUPRO limit): 250 buckets

    def __init__(self, buckets: dict[str, int]) -> None:
        self.buckets = buckets
        self.kept: dict[str, list[float]] = {}
        self.last_bucket: np.ndarray | None = None
        self.final: dict[str, float] | None = None
        self.final_kept = False

    def _bucket(self, name: str, values: np.ndarray) -> np.ndarray:
        coarse = np.floor(values * self.buckets[name])
        if name != "fpr":
            return coarse
        limit, fine = self.FINE_FPR
        return np.where(values <= limit, np.floor(values / limit * fine), fine + coarse)

    def add(self, columns: dict[str, np.ndarray]) -> None:
        """columns: {name: M floats} of M consecutive curve points (every chunk has the same names)."""
        bucket = np.stack([self._bucket(n, columns[n]) for n in self.buckets if n in columns])   # C x M
        before = bucket[:, :1] + 1 if self.last_bucket is None else self.last_bucket[:, None]
        keep = np.flatnonzero(np.any(bucket != np.concatenate((before, bucket[:, :-1]), axis=1), axis=0))
        for name, values in columns.items():
            self.kept.setdefault(name, []).extend(np.asarray(values, np.float64)[keep].tolist())
        self.last_bucket = bucket[:, -1]
        self.final = {n: float(v[-1]) for n, v in columns.items()}
        self.final_kept = bool(keep.size) and keep[-1] == bucket.shape[1] - 1

    def points(self) -> dict[str, list[float]]:
        """{column: K floats}, the kept points in sweep order, the final point last."""
        out = {n: list(v) for n, v in self.kept.items()}
        if self.final is not None and not self.final_kept:
            for name, value in self.final.items():
                out[name].append(value)
        return out


class _Sweep:
    """Running threshold sweep over tie groups given in descending score order.

    Holds cumulative TP, FP and PRO (sum of 1 / (n_components * area) over entered positives),
    the last curve point, and the running AUROC trapezoid sum, AP sum, F1 max and, per FPR
    limit, the PRO trapezoid area up to that limit.
    """

    def __init__(self, n_pos: int, n_neg: int, n_components: int, limits: Sequence[float], pro: bool,
                 sampler: CurveSampler | None = None) -> None:
        self.n_pos, self.n_neg, self.n_components = n_pos, n_neg, n_components
        self.sampler = sampler
        self.tp = self.fp = 0
        self.recall = self.fpr = self.pro = 0.0  # last point; every curve starts at (0, 0)
        self.auroc = self.ap = self.f1 = 0.0
        self.with_pro = pro and n_components > 0 and n_neg > 0
        self.pro_area = dict.fromkeys(limits, 0.0)
        self.pro_done = dict.fromkeys(limits, False)

    def gain(self, area: np.ndarray) -> np.ndarray:
        """area: K uint32 -> K float64 PRO gain per record (0 for normal pixels)."""
        area = area.astype(np.float64)
        return np.divide(1.0, self.n_components * area, out=np.zeros(area.shape), where=area > 0)

    def tally(self, area: np.ndarray) -> tuple[int, int, float]:
        """area: K uint32 of records all tied with one score -> (positives, negatives, PRO gain)."""
        positives = int(np.count_nonzero(area))
        return positives, area.size - positives, float(self.gain(area).sum())

    def add(self, block: np.ndarray, extra: tuple[int, int, float]) -> None:
        """block: K RECORD, every record with key <= the step's pivot except ``extra``, the tally
        of further records tied with the pivot (the largest key, i.e. the block's last group)."""
        order = np.argsort(block["key"])
        keys, area = block["key"][order], block["area"][order]
        ends = np.append(np.flatnonzero(keys[1:] != keys[:-1]), keys.size - 1)  # last index per group
        tp = self.tp + np.cumsum(area > 0, dtype=np.int64)[ends]
        fp = self.fp + ends + 1 - (tp - self.tp)
        pro = self.pro + np.cumsum(self.gain(area))[ends]
        tp[-1] += extra[0]
        fp[-1] += extra[1]
        pro[-1] += extra[2]

        recall = tp / self.n_pos
        precision = tp / (tp + fp)
        self.ap += float(np.sum(np.diff(recall, prepend=self.recall) * precision))
        if self.sampler is not None:
            self.sampler.add({"fpr": fp / max(self.n_neg, 1), "tpr": recall, "precision": precision,
                              **({"pro": pro} if self.with_pro else {})})
        self.f1 = max(self.f1, float(np.max(2.0 * tp / (2 * tp + fp + (self.n_pos - tp)))))
        if self.n_neg:
            fpr = np.concatenate(([self.fpr], fp / self.n_neg))
            self.auroc += float(np.trapezoid(np.concatenate(([self.recall], recall)), fpr))
            if self.with_pro:
                self._add_pro_area(fpr, np.concatenate(([self.pro], pro)))
            self.fpr = float(fpr[-1])
        self.tp, self.fp, self.pro, self.recall = int(tp[-1]), int(fp[-1]), float(pro[-1]), float(recall[-1])

    def _add_pro_area(self, fpr: np.ndarray, pro: np.ndarray) -> None:
        """fpr, pro: M+1 points (the previous one first), fpr ascending. Adds the trapezoid area
        up to each limit not yet passed, interpolating the curve at the limit (metrics._area_to)."""
        for limit, done in self.pro_done.items():
            if done:
                continue
            k = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit, >= 1
            self.pro_area[limit] += float(np.trapezoid(pro[:k], fpr[:k]))
            if k < fpr.size:  # the curve passes the limit in this step
                x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
                if x0 < limit:
                    y_end = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                    self.pro_area[limit] += float((limit - x0) * (y0 + y_end) / 2)
                self.pro_done[limit] = True


def _merge(fh: BinaryIO, runs: list[_Run], budget: int, sweep: _Sweep) -> None:
    """Pass 2: feed every tie group to ``sweep`` in descending score order.

    Each step tops every run's buffer up to B = max(1, budget // len(runs)) records, takes from
    every buffer the records with key <= pivot (the smallest last key), and tallies the records
    past a buffer that tie with the pivot. The pivot's run is emptied, so every step makes
    progress; held records never exceed len(runs) * B plus one window of B."""
    block = max(1, budget // len(runs))
    live = list(runs)
    while live:
        for run in live:  # top every buffer up to B records (or the rest of its run)
            if run.buf.size < block and run.unread:
                more = run.read(fh, min(block - run.buf.size, run.unread))
                run.buf = np.concatenate((run.buf, more)) if run.buf.size else more
        # Records after a buffer have keys >= its last key >= pivot: none can sort before the pivot.
        pivot = min(float(run.buf["key"][-1]) for run in live)
        taken, positives, negatives, gain = [], 0, 0, 0.0
        for run in live:
            k = int(np.searchsorted(run.buf["key"], pivot, side="right"))
            taken.append(run.buf[:k])
            run.buf = run.buf[k:]
            # An emptied buffer ended on the pivot: records tied with it may follow. Tally them
            # window by window (not kept) so that the pivot's tie group is complete in this step.
            while run.buf.size == 0 and run.unread:
                window = run.read(fh, min(block, run.unread))
                k = int(np.searchsorted(window["key"], pivot, side="right"))
                p, n, g = sweep.tally(window["area"][:k])
                positives, negatives, gain = positives + p, negatives + n, gain + g
                run.buf = window[k:]
        live = [run for run in live if run.buf.size or run.unread]
        sweep.add(np.concatenate(taken), (positives, negatives, gain))


def stream_pixel_metrics(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    pro: bool = True,
    fpr_limits: Sequence[float] = (0.3,),
    budget: int = 1 << 22,
    spill_dir: str | None = None,
) -> dict[str, float | None]:
    """Pixel metrics of one category, equal to ``metrics.pixel_metrics`` but in bounded memory.

    pairs: iterable of (map, mask), map H_i x W_i float anomaly scores, mask H_i x W_i bool
        ground truth; sizes may differ between images. Consumed once, one image at a time.
    pro: compute the AUPRO values (None otherwise).
    fpr_limits: FPR limits in (0, 1] of the AUPRO values ``pixel_aupro@{limit}`` (see aupro_key).
    budget: records (12 bytes each) the merge buffers at once; peak memory is about 100 bytes x
        budget (one merge step's arrays) or one image's working set, whichever is larger, and
        does not grow with the number of images.
    spill_dir: directory of the temporary spill file (12 bytes per pixel; default: system temp),
        removed on return and on error.

    Returns {"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro" (FPR 0..0.3),
    "pixel_aupro@{limit}" per limit}, plain floats or None as in metrics.py: all None without an
    anomalous pixel; AUROC and AUPRO None without a normal pixel. Raises ValueError on NaN/inf.
    """
    return _stream(pairs, pro, fpr_limits, budget, spill_dir, None)[0]


CURVE_BUCKETS = {"fpr": 150, "tpr": 200, "pro": 200}   # a few hundred points per category (CurveSampler)


def stream_pixel_metrics_and_curves(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    pro: bool = True,
    fpr_limits: Sequence[float] = (0.3,),
    budget: int = 1 << 22,
    spill_dir: str | None = None,
) -> tuple[dict[str, float | None], dict[str, list[float]] | None]:
    """The metrics of :func:`stream_pixel_metrics` and a subset of the exact curve points behind them.

    Returns (metrics, curves); curves = {"fpr", "tpr", "precision"[, "pro"]}: K floats each, one entry per kept
    threshold (descending), the exact cumulative rates there (``pro`` only when the PRO curve is defined; ``fpr``
    all 0 without a normal pixel); None without an anomalous pixel. K <= about 1,000, typically a few hundred.
    """
    limits = [float(limit) for limit in fpr_limits]
    buckets = {k: v for k, v in CURVE_BUCKETS.items() if pro or k != "pro"}
    metrics_out, sampler = _stream(pairs, pro, limits, budget, spill_dir, CurveSampler(buckets))
    return metrics_out, (sampler.points() if sampler is not None and sampler.final is not None else None)


def _stream(pairs, pro, fpr_limits, budget, spill_dir, sampler: CurveSampler | None
            ) -> tuple[dict[str, float | None], CurveSampler | None]:
    """The computation behind both entry points; ``sampler`` (optional) keeps curve points."""
    limits = [float(limit) for limit in fpr_limits]
    for limit in limits:
        if not 0.0 < limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {limit}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    out: dict[str, float | None] = dict.fromkeys([*PIXEL_KEYS, *map(aupro_key, limits)])

    fd, path = tempfile.mkstemp(prefix="pixel_metrics_", suffix=".spill", dir=spill_dir)
    try:
        with os.fdopen(fd, "w+b") as fh:
            runs, n_pos, n_neg, n_components = _spill(pairs, fh)
            if n_pos == 0:
                return out, None
            sweep = _Sweep(n_pos, n_neg, n_components, sorted({0.3, *limits}), pro, sampler)
            _merge(fh, runs, budget, sweep)
    finally:
        os.unlink(path)

    out["pixel_auroc"] = sweep.auroc if n_neg else None
    out["pixel_ap"] = sweep.ap
    out["pixel_f1_max"] = sweep.f1
    if sweep.with_pro:
        out["pixel_aupro"] = sweep.pro_area[0.3] / 0.3
        for limit in limits:
            out[aupro_key(limit)] = sweep.pro_area[limit] / limit
    return out, sampler
