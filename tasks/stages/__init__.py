"""Foundation stages shared by methods, declared once (``tasks.engine.stage.declare_stage``):

  sam.py            SAM image embedding; box refinement through the prompt memo (sam_memo.py)
  sam_auto.py       SAM automatic masks on the cached embedding (a point grid, segment-anything's filters)
  grounding_dino.py GroundingDINO detections per (image, caption)
  features.py       WideResNet-50-2 and DINOv2 feature grids
  clip.py           CLIP image tokens per image; text embeddings per (category, prompt set), a set item

A method imports them from here, never from another method's package, so two methods on one store share every
artifact they have in common (same model, parameters and images -> same key).
"""
