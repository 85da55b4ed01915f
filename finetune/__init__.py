"""Stage two: gated fusion, a GPT-style backbone (frozen, LoRA or full) and task heads (MMSense-style)."""
