"""Evaluation of a run directory: accuracy, per-class accuracy and the confusion matrix."""

from cifarlab.evaluate.metrics import confusion_matrix, classification_report, evaluate_run
from cifarlab.evaluate.testset import evaluate_testset

__all__ = ["confusion_matrix", "classification_report", "evaluate_run", "evaluate_testset"]
