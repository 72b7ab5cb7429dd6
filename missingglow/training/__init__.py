"""Training: the loop, its typed configuration and presets, checkpoints, the run lock, held-out
bits/dim."""
