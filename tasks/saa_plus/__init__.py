"""SAA+: SAA with hybrid prompts (property, visual saliency and confidence prompts)."""
