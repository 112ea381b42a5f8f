"""Counts model forward calls and loads per process, so tests can prove that a cached run makes none."""
from __future__ import annotations

from collections import Counter

MODEL_CALLS: Counter[str] = Counter()
MODEL_LOADS: Counter[str] = Counter()
LOAD_SECONDS: Counter[str] = Counter()


def count_call(model_name: str, n: int = 1) -> None:
    MODEL_CALLS[model_name] += n


def count_load(model_name: str) -> None:
    MODEL_LOADS[model_name] += 1


def add_load_seconds(model_name: str, seconds: float) -> None:
    LOAD_SECONDS[model_name] += seconds


def total_calls() -> int:
    return sum(MODEL_CALLS.values())


def reset_counters() -> None:
    MODEL_CALLS.clear()
    MODEL_LOADS.clear()
    LOAD_SECONDS.clear()
