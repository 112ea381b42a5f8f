"""`method_flow`: Prefect's ``@flow``, with the flow's parameters serialised by pydantic-core.

Prefect records a flow run's parameters through FastAPI's ``jsonable_encoder``, importing FastAPI (a whole web
framework: about 0.25 s, 6% of a warm ``anomflow run``) only for that. ``pydantic_core.to_jsonable_python``
gives the same JSON for what anomflow's flows take (pydantic configs, frozen dataclasses, tuples, strings;
``tests/test_startup.py`` compares the two) and is loaded already. A value neither can serialise is
recorded as ``<TypeName>``, as Prefect does.
"""
from __future__ import annotations

from typing import Any, Callable

from prefect.flows import Flow


class MethodFlow(Flow):
    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        from prefect.futures import PrefectFuture
        from prefect.states import State
        from pydantic_core import PydanticSerializationError, to_jsonable_python

        serialised: dict[str, Any] = {}
        for key, value in parameters.items():
            if isinstance(value, (PrefectFuture, State)):   # never resolved here (Prefect does the same)
                serialised[key] = f"<{type(value).__name__}>"
                continue
            try:
                serialised[key] = to_jsonable_python(value)
            except (PydanticSerializationError, TypeError, ValueError, RecursionError):
                serialised[key] = f"<{type(value).__name__}>"
        return serialised


def method_flow(**options: Any) -> Callable[[Callable[..., Any]], MethodFlow]:
    """``@method_flow(name="saa", persist_result=False)``: takes the keyword options of ``prefect.flow``."""
    def decorate(fn: Callable[..., Any]) -> MethodFlow:
        return MethodFlow(fn, **options)
    return decorate
