"""Reading checkpoints safely: safetensors, or ``torch.load(weights_only=True)``; never a plain unpickle."""
from __future__ import annotations

from pathlib import Path

import torch

_WRAPPERS = ("state_dict", "model")  # training checkpoints nest the weights under one of these keys


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint on the CPU: ``.safetensors`` via safetensors, else ``torch.load(weights_only=True)``;
    a ``{"state_dict"|"model": {...}}`` wrapper is unwrapped and a DataParallel ``module.`` prefix stripped."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_strict_on_meta(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Assign ``path``'s tensors to a model built on the meta device; keys and shapes must match exactly.
    Raises RuntimeError if a tensor is left on meta (a non-persistent buffer the caller must rebuild first)."""
    model.load_state_dict(read_state_dict(path), strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"checkpoint {path} left tensors unset: {left[:5]}")
    return model
