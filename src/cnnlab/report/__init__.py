"""The report: the whole assignment answered in one command, as HTML, PDF, a notebook and results.json.

One module per part, in the assignment's order (the list is `build.SECTIONS`):

    training.py      1.1, 1.2      curves, test accuracy, random test images
    anatomy.py       1.3–1.5       layer shapes, parameters, neurons
    batch_norm.py    1.6           batch-normalization
    filters.py       2.1–2.2       filters
    activations.py   2.3           activations
    occlusion.py     2.4           occlusion
    class_models.py  3.1           class models
    targeted.py      3.2           targeted fakes
    robustness.py    4.1           FGSM/PGD robustness (beyond the assignment)

`base.py` holds what sections share (Context, Section, the printed-number registry, the glossary);
`build.py` trains the runs, calls the sections and renders HTML and PDF; `notebook.py` writes
report.ipynb, the code behind every answer (the source of the function cnnlab ran, run on the
report's networks and checked against results.json), executes it in a kernel and renders its PDF.
"""

from .build import SECTIONS, build_report

__all__ = ["SECTIONS", "build_report"]
