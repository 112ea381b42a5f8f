"""What every stage task module shares: the Prefect task decorator and model identities for stage keys."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.engine.context import RunContext
from tasks.models.identity import model_identity

# Stage tasks cache nothing in Prefect: the artifact store is the cache, keyed on what each stage reads.
stage_task = task(cache_policy=NO_CACHE, persist_result=False)


def model_identity_dict(ctx: RunContext, name: str) -> dict:
    """The identity of model ``name`` as it goes into a stage key (weights hash or seeded-random recipe)."""
    return model_identity(name, ctx.models_dir, ctx.random_weights).as_dict()
