"""Training: the per-worker loop and its checkpoints."""
