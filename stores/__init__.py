"""The artifact store: content-addressed stage outputs in a Zarr v3 group (local path or any fsspec URL)."""
from stores.artifact_store import ArtifactRef, ArtifactStore, ArtifactView, StoreError
from stores.keys import artifact_key, canonical_json, item_key
from stores.packs import ItemData

__all__ = ["ArtifactRef", "ArtifactStore", "ArtifactView", "ItemData", "StoreError", "artifact_key",
           "canonical_json", "item_key"]
