"""The HTML report: `write_report(run_dirs, out)` -> out/index.html (self-contained) + out/figures/*.png."""

from cifarlab.pictures import save_png
from cifarlab.report.figures import accuracy_curves, confusion_figure, lr_drop_epochs
from cifarlab.report.html import write_report

__all__ = ["write_report", "accuracy_curves", "confusion_figure", "lr_drop_epochs", "save_png"]
