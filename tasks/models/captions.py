"""GroundingDINO captions, without importing torch (stage modules key on them before any model loads)."""
from __future__ import annotations


def normalize_caption(caption: str) -> str:
    """Lower-case, strip, end with '.' (the form GroundingDINO was trained on)."""
    caption = caption.lower().strip()
    return caption if caption.endswith(".") else caption + "."
