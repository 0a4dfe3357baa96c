"""`cifarlab app`: a local web page that puts any photo in front of trained runs and shows why they answer.

    from cifarlab.app import Lab, prepare, read_photo
    lab = Lab(["runs/imp2", "runs/mnet2"])
    inputs = prepare(read_photo("cat.jpg"), "cat.jpg")
    answers = lab.predict_all(inputs)                 # per run: top-5, unfiltered and blurred
    lab.explain("MNET2", inputs, "Grad-CAM")           # an Explanation: image + one line

`lab.py` holds what the page does (no Gradio import: testable without a browser), `study.py` the study
tab's tables and figures, `ui.py` the Gradio page and `serve` (Gradio is the optional extra `app`).
"""

from cifarlab.app.lab import METHODS, Answer, Explanation, Inputs, Lab, Model, prepare, read_photo, views
from cifarlab.app.study import Study

__all__ = ["METHODS", "Answer", "Explanation", "Inputs", "Lab", "Model", "Study", "prepare", "read_photo", "views"]
