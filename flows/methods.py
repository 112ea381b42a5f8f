"""The methods the CLI can run: name -> (config model, flow). Explicit, no import side effects."""
from __future__ import annotations

from typing import Any, Callable


def method_table() -> dict[str, tuple[type, Callable[..., Any]]]:
    from flows.saa import saa_flow
    from flows.saa_plus import saa_plus_flow
    from flows.sam_lad import sam_lad_flow
    from tasks.saa.config import SAAConfig
    from tasks.saa_plus.config import SAAPlusConfig
    from tasks.sam_lad.config import SAMLADConfig

    return {"saa": (SAAConfig, saa_flow), "saa-plus": (SAAPlusConfig, saa_plus_flow),
            "sam-lad": (SAMLADConfig, sam_lad_flow)}
