"""SAA: GroundingDINO boxes from language prompts, refined into masks by SAM, fused into an anomaly map."""
