"""Foundation stages shared by methods: SAM (embedding, box prompts and their memo) and GroundingDINO.

A method imports them from here, never from another method's package, so two methods on one store share every
artifact they have in common (same model, parameters and images -> same key).
"""
