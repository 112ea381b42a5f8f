"""The methods the CLI can run: name -> (config model, flow). Explicit, no import side effects; only the chosen
method's modules are imported (a warm SAA run never imports torch, which SAM-LAD's modules need)."""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

# name -> (module and class of its config, module and function of its flow)
METHODS: dict[str, tuple[str, str, str, str]] = {
    "saa": ("tasks.saa.config", "SAAConfig", "flows.saa", "saa_flow"),
    "saa-plus": ("tasks.saa_plus.config", "SAAPlusConfig", "flows.saa_plus", "saa_plus_flow"),
    "sam-lad": ("tasks.sam_lad.config", "SAMLADConfig", "flows.sam_lad", "sam_lad_flow"),
}


def method_entry(name: str) -> tuple[type, Callable[..., Any]]:
    """(config model, flow) of one method; KeyError for an unknown name."""
    config_module, config_class, flow_module, flow_function = METHODS[name]
    return getattr(import_module(config_module), config_class), getattr(import_module(flow_module), flow_function)


def method_table() -> dict[str, tuple[type, Callable[..., Any]]]:
    """Every method's (config model, flow): imports all of them."""
    return {name: method_entry(name) for name in METHODS}
