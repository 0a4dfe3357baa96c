"""Training: `fit(cfg, data, run_dir)` runs the recipe and writes the run directory."""

from cifarlab.train.loop import fit, evaluate_model, select_device, predict_logits

__all__ = ["fit", "evaluate_model", "select_device", "predict_logits"]
