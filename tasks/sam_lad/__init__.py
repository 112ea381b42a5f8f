"""SAM-LAD (METHODS.md §4): object-level logical anomaly detection from SAM objects, DINOv2 features, DCGA
descriptors, optimal-transport object matching (OMM) and per-object Gaussian scoring (AMM).

The equations live in pure numpy/torch modules (``bank``, ``dcga``, ``omm``, ``amm``, ``assemble``) with no IO and
no models; the cached pipeline stages call them."""
