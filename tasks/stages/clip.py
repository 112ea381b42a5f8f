"""CLIP foundation stages: image tokens per image, prompt-ensembled text embeddings per (category, prompt set).

  clip_image_tokens     per image: embedding D float32 (projected class token, not normalised), tokens N x D'
                        float32 (patch tokens after ln_post, not projected; row-major over the g x g grid,
                        N = g^2, g = size / patch) — ``ClipAdapter.encode_image_tokens``        meta: grid [g, g]
  clip_text_embeddings  per set item (one per category and prompt set, :func:`text_prompt_set`):
                        embeddings P x D float32, every prompt's L2-normalised text embedding, state by state in
                        the order of the ``states`` parameter (each state's prompts in their given order);
                        state P int32, the index in ``states`` of each row; means S x D float32, per state the
                        mean of its rows, renormalised to unit length (CLIP's prompt ensembling, as WinCLIP does)
                        meta: category, states, prompts (per state, the texts encoded)

The vision tower returns only its last layer's tokens (the adapter has no layer choice), so the image stage has
no layers parameter. A text item depends on no image: its set has no members, its dependents are the category's
test images (they fail with it), and its name carries a digest of the prompts, so different prompts make a
different item and the same prompts the same one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Mapping, Sequence

import numpy as np

from stores import ItemData
from tasks.engine.context import ImageItem
from tasks.engine.runner import WorkItem
from tasks.engine.stage import ItemSet, StageCall, declare_stage


def clip_model(call: StageCall):
    """The ``clip`` model, checked to be a CLIP."""
    model = call.model("clip")
    if model.spec.family != "clip":
        raise TypeError(f"stage {call.stage.name}: model {model.spec.name!r} is a {model.spec.family} model, not clip")
    return model


@declare_stage("clip_image_tokens", 1, params=("size",), models=("clip",), reads_pixels=True)
def clip_image_tokens(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Global embedding and patch tokens of each image (RGB, squashed to size x size); the batch is one forward."""
    size = call.params["size"]
    model = clip_model(call)
    grid = model.grid(size)
    pooled, tokens = model.encode_image_tokens([call.pixels(w.payload) for w in batch], size)
    return [ItemData({"embedding": e, "tokens": t}, {"grid": [grid, grid]}) for e, t in zip(pooled, tokens)]


# ------------------------------------------------------------------------------------------------- text sets
def prompt_digest(prompts: Mapping[str, Sequence[str]]) -> str:
    """16 hex digits of sha256 over the prompts (states sorted, each state's texts in order)."""
    text = json.dumps({state: list(texts) for state, texts in prompts.items()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def text_prompt_set(category: str, prompts: Mapping[str, Sequence[str]],
                    dependents: Sequence[ImageItem] = ()) -> ItemSet:
    """The set item of one category's prompt set: ``prompts`` maps each state (``normal``, ``anomalous`` ...) to
    its prompt texts; ``dependents`` are the images that fail if it fails (the category's test images).
    Named ``text:<category>:<prompt digest>``; no members."""
    payload = {"category": category, "prompts": {state: tuple(texts) for state, texts in prompts.items()}}
    return ItemSet(f"text:{category}:{prompt_digest(prompts)}", (), tuple(dependents), payload)


def ordered_prompts(payload: dict, states: Sequence[str]) -> list[tuple[int, str]]:
    """(state index, text) of every prompt, state by state in ``states`` order; a set whose states differ from
    the parameter's, or with a state without prompts, is refused."""
    prompts = payload["prompts"]
    if set(prompts) != set(states):
        raise ValueError(f"prompt states {sorted(prompts)} are not the stage's states {sorted(states)}")
    rows = []
    for index, state in enumerate(states):
        texts = prompts[state]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"state {state!r} needs one or more non-empty prompt texts, got {list(texts)!r}")
        rows += [(index, t) for t in texts]
    return rows


def ensemble(embeddings: np.ndarray, state: np.ndarray, n_states: int) -> np.ndarray:
    """S x D: per state, the mean of its (unit) rows, renormalised to unit length."""
    means = np.stack([embeddings[state == s].mean(0) for s in range(n_states)])
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


@declare_stage("clip_text_embeddings", 1, params=("templates", "states"), models=("clip",), produces="set")
def clip_text_embeddings(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Each set item: its prompts' normalised text embeddings and their per-state ensemble; every prompt of the
    batch goes through the text tower in one forward. params: templates (the name of the template set the prompts
    were made from, so that the key says it), states (the state names, in output order)."""
    states = list(call.params["states"])
    rows = [ordered_prompts(w.payload.payload, states) for w in batch]   # refuses a bad set before any forward
    encoded = clip_model(call).encode_text([text for r in rows for _, text in r])
    out, start = [], 0
    for w, r in zip(batch, rows):
        embeddings = encoded[start:start + len(r)]
        start += len(r)
        state = np.array([s for s, _ in r], np.int32)
        means = ensemble(embeddings, state, len(states))
        out.append(ItemData({"embeddings": embeddings, "state": state, "means": means},
                            {"category": w.payload.payload["category"], "states": states,
                             "prompts": {s: [t for i, t in r if states[i] == s] for s in states}}))
    return out
