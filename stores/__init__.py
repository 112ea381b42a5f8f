"""The artifact store: content-addressed stage outputs in a Zarr v3 group (local path or any fsspec URL)."""
from stores.artifact_store import ArtifactRef, ArtifactStore, ItemData
from stores.keys import artifact_key, canonical_json, item_key

__all__ = ["ArtifactRef", "ArtifactStore", "ItemData", "artifact_key", "canonical_json", "item_key"]
