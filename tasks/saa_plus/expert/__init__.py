"""SAA+ expert knowledge (METHODS §2.3, §2.7) stored as validated YAML data, one entry per category.

The official code kept each category's properties in an English sentence parsed by word position; here they
are named fields (``mvtec.yaml``, ``visa.yaml`` next to this module, or a user's own YAML file).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HERE = Path(__file__).parent
SHIPPED = ("mvtec", "visa")


class ExpertError(ValueError):
    """A bad expert-knowledge file; the message names the file, the category and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ExpertEntry(_Strict):
    defect_captions: list[str]                            # GDINO captions, verbatim; one string = one caption
    filter_word: str                                      # drop a box whose phrase contains it
    object_prompt: str = Field(min_length=1)              # the object's word: the caption with object_caption=clean
    object_caption_official: str | None = Field(None, min_length=1)  # the official code's caption; None = object_prompt
    object_count: int = Field(ge=1)                       # n: an object box covers at most 1/n of the image
    similar_objects: bool = False                         # informational only
    k: int = Field(ge=1)                                  # K of the confidence prompt
    area_threshold: float = Field(gt=0, le=1)             # θ: defect box area <= θ × object box area


class ExpertTable(_Strict):
    dataset: str
    categories: dict[str, ExpertEntry]


class _Defaults(_Strict):
    object_prompt: str = Field(min_length=1)
    object_count: int = Field(ge=1)
    similar_objects: bool = False
    k: int = Field(ge=1)
    area_threshold: float = Field(gt=0, le=1)


class _General(_Strict):
    prompts: list[str]
    filter_word: str
    defaults: _Defaults


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(entry)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (a typo?); " + msg
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _read_yaml(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExpertError(f"{label}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ExpertError(f"{label}: {where}YAML syntax error: {problem}") from exc


def _validate(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ExpertError(f"{where}: {_describe(exc)}") from None


def load_table(name_or_path: str | Path) -> ExpertTable:
    """Load ``"mvtec"``, ``"visa"`` (shipped next to this module) or a user's YAML file."""
    if str(name_or_path) in SHIPPED:
        path = HERE / f"{name_or_path}.yaml"
        label = path.name
    else:
        path = Path(name_or_path)
        label = str(path)
        if not path.is_file():
            raise ExpertError(f"expert table {label!r} not found: give one of {list(SHIPPED)} or a YAML file path")
    data = _read_yaml(path, label)
    if not isinstance(data, dict):
        raise ExpertError(f"{label}: expected a mapping with 'dataset' and 'categories', got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - {"dataset", "categories"})
    if unknown:
        raise ExpertError(f"{label}: unknown top-level field(s) {unknown}; allowed: 'dataset', 'categories'")
    cats = data.get("categories")
    if not isinstance(cats, dict) or not cats:
        raise ExpertError(f"{label}: 'categories' must be a non-empty mapping of category name -> entry")
    dataset = data.get("dataset", path.stem)
    if not isinstance(dataset, str):
        raise ExpertError(f"{label}: dataset: expected a string, got {dataset!r}")
    entries = {}
    for name, raw in cats.items():
        where = f"{label}: category '{name}'"
        if not isinstance(raw, dict):
            raise ExpertError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
        entries[str(name)] = _validate(ExpertEntry, raw, where)
    return ExpertTable(dataset=dataset, categories=entries)


@lru_cache(maxsize=1)
def _general() -> _General:
    path = HERE / "general.yaml"
    data = _read_yaml(path, path.name)
    if not isinstance(data, dict) or "general" not in data:
        raise ExpertError(f"{path.name}: expected a top-level 'general' section")
    return _validate(_General, data["general"], f"{path.name}: general")


def general_prompts(category: str) -> list[tuple[str, str]]:
    """The class-agnostic prompts for ``category`` (the folder name) as ``[(caption, filter_word)]``."""
    g = _general()
    word = g.filter_word.format(category=category)
    return [(t.format(category=category), word) for t in g.prompts]


@dataclass(frozen=True)
class CategoryPrompts:
    category: str
    captions: list[tuple[str, str]]        # (caption, filter word): general first, then the expert's
    object_prompt: str                     # the clean word
    object_caption_official: str           # what the official code sends (e.g. "bottle," -> "bottle,.")
    object_count: int
    k: int
    area_threshold: float
    known: bool
    warning: str | None = None

    def object_caption(self, mode: str) -> str:
        """The object pass's caption: ``official`` (the official code's text) or ``clean`` (the bare word)."""
        if mode not in ("official", "clean"):
            raise ValueError(f"object_caption must be 'official' or 'clean', got {mode!r}")
        return self.object_caption_official if mode == "official" else self.object_prompt


def prompts_for(table: ExpertTable | None, category: str, language: bool = True) -> CategoryPrompts:
    """Prompts and properties for one category; ``language=False`` drops the expert's defect captions."""
    captions = general_prompts(category)
    entry = table.categories.get(category) if table is not None else None
    if entry is not None:
        if language:
            captions += [(c, entry.filter_word) for c in entry.defect_captions]
        return CategoryPrompts(category, captions, entry.object_prompt,
                               entry.object_caption_official or entry.object_prompt, entry.object_count, entry.k,
                               entry.area_threshold, known=True)
    d = _general().defaults
    obj = d.object_prompt.format(category=category)
    where = f"the '{table.dataset}' expert table" if table is not None else "any expert table (none given)"
    warning = (f"category '{category}' has no entry in {where}: using the general prompts and default properties "
               f"(object_prompt={obj!r}, object_count={d.object_count}, k={d.k}, "
               f"area_threshold={d.area_threshold}; UNVERIFIED defaults)")
    return CategoryPrompts(category, captions, obj, obj, d.object_count, d.k, d.area_threshold, known=False,
                           warning=warning)


def paper_table2() -> dict[str, dict[str, float | None]]:
    """SAA+ paper Table 2 (pixel F1-max %): variant -> dataset -> value (None where the paper has no row)."""
    path = HERE / "paper_table2.yaml"
    data = _read_yaml(path, path.name)
    out: dict[str, dict[str, float | None]] = {}
    for variant, row in (data or {}).items():
        if not isinstance(row, dict):
            raise ExpertError(f"{path.name}: variant '{variant}': expected a mapping dataset -> value")
        out[str(variant)] = {str(ds): (None if v is None else float(v)) for ds, v in row.items()}
    return out
