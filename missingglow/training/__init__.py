"""Training: the loop, its configuration and presets, checkpoints, the run lock, held-out bits/dim."""
