"""Probes: small trainables over cached features (the linear per-patch probe)."""
