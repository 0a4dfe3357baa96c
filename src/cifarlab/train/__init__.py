"""Training: `fit(cfg, data, run_dir)` runs the recipe and writes the run directory."""

from cifarlab.train.loop import fit

__all__ = ["fit"]
