"""The stage engine: run a pure batch function over the items an artifact still lacks."""
