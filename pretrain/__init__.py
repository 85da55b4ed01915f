"""Stage one: bind modality encoders to a wireless anchor with a symmetric InfoNCE loss (ImageBind-style)."""
