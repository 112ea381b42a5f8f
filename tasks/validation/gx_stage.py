"""The Great Expectations run as a cached set stage: one item per run's validated content.

  validation_results  per set (``validation:<sha256 of the frames and suites>``): data_docs D uint8 (a zip of the
                      Data Docs site)   meta: success, suites {name: {version, success, expectations [...]}}

The set's name hashes everything validated (the tables built from the statistics artifacts, the suites with their
versions, floors, expected counts and baseline bounds), so a run that validates the same content reuses the item
and never imports Great Expectations. GX Core 1.x: an ephemeral context, a pandas data source with one dataframe
asset per table, one ``ValidationDefinition`` per suite (its results kept in the context's store), then one build
of a local Data Docs site.
"""
from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
import zipfile
from typing import Any

import numpy as np

from stores import ItemData
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage

SITE = "anomflow"
EXAMPLES = 5   # unexpected rows named per expectation


def plain(value: Any) -> Any:
    """A GX result value as plain JSON (numpy scalars unwrapped, NaN and inf as None, tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _context(docs_dir: str):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False)))
    context.add_data_docs_site(SITE, {"class_name": "SiteBuilder", "show_how_to_buttons": False,
                                      "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                                        "base_directory": docs_dir},
                                      "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    return context


def run_suites(tables: dict[str, dict[str, list]], suites: list[dict], docs_dir: str) -> dict[str, Any]:
    """Validate each suite against its table (suite name = table name); Data Docs go to ``docs_dir``.

    tables: {name: {column: values}}; suites: ``Suite.as_dict()`` each. Returns {success, suites}."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd

    context = _context(docs_dir)
    source = context.data_sources.add_pandas("anomflow")
    results = {}
    for spec in suites:
        name = spec["name"]
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        checks = [getattr(gxe, c["expectation"])(**c["kwargs"], description=c["description"]) for c in spec["checks"]]
        # the whole suite at once: adding expectations one by one re-serialises the suite each time
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=checks,
                                                       meta={"version": spec["version"], **spec["meta"]}))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        validation = definition.run(batch_parameters={"dataframe": pd.DataFrame(tables[name])},
                                    result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES,
                                                   "unexpected_index_column_names": [spec["id_column"]]})
        results[name] = _suite_result(spec, validation)
    context.build_data_docs(site_names=[SITE])   # once, from the results the definitions stored
    return {"success": all(s["success"] for s in results.values()), "suites": results}


def _suite_result(spec: dict, validation) -> dict[str, Any]:
    expectations = []
    for result in validation.results:
        config = result.expectation_config
        kwargs = {k: v for k, v in plain(config.kwargs).items() if k not in ("batch_id", "condition_parser")}
        if isinstance(kwargs.get("row_condition"), dict):     # GX 1.x wraps the pandas text
            kwargs["row_condition"] = kwargs["row_condition"].get("pass_through_filter")
        found = result.result or {}
        named = [row.get(spec["id_column"]) for row in found.get("partial_unexpected_index_list") or []]
        examples = named if named else found.get("partial_unexpected_list") or []
        expectations.append({"expectation": config.type, "column": kwargs.get("column") or kwargs.get("column_A"),
                             "kwargs": kwargs, "success": bool(result.success),
                             "unexpected_count": plain(found.get("unexpected_count")),
                             "unexpected_examples": plain(examples[:EXAMPLES]),
                             "observed_value": plain(found.get("observed_value")),
                             "description": config.description,
                             **({"error": plain(result.exception_info.get("exception_message"))}
                                if (result.exception_info or {}).get("raised_exception") else {})})
    return {"version": spec["version"], "success": bool(validation.success), "expectations": expectations}


def referenced_files(path: str) -> list[str]:
    """The site's files, less the ``static/`` ones no page names (GX ships tutorial GIFs of several MB for its
    how-to buttons, which this site does not show), as paths relative to ``path``."""
    files = sorted(os.path.relpath(os.path.join(folder, n), path) for folder, _, names in os.walk(path) for n in names)
    pages = "".join(open(os.path.join(path, f), encoding="utf-8", errors="replace").read()
                    for f in files if f.endswith(".html"))
    return [f for f in files if not f.startswith("static" + os.sep) or os.path.basename(f) in pages]


def zip_directory(path: str) -> np.ndarray:
    """A Data Docs site as a deflated zip (``referenced_files``), D uint8 (what the store keeps)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in referenced_files(path):
            archive.write(os.path.join(path, name), name)
    return np.frombuffer(buffer.getvalue(), np.uint8).copy()


@declare_stage("validation_results", 2, params=("suite_versions",),
               upstream=("image_statistics", "map_statistics?"), produces="set")
def validation_results(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Each item: the suites run on their tables (payload {tables, suites}), results and the Data Docs zip."""
    out = []
    for w in batch:
        payload = w.payload.payload
        docs = tempfile.mkdtemp(prefix="anomflow-data-docs-")
        try:
            results = run_suites(payload["tables"], payload["suites"], docs)
            out.append(ItemData({"data_docs": zip_directory(docs)}, results))
        finally:
            shutil.rmtree(docs, ignore_errors=True)
    return out
