"""Writes notebooks/assignment.ipynb (without outputs) from cnnlab.notebook.assignment_notebook.

Change the cells there (src/cnnlab/notebook.py), then run this; tests/test_notebook.py checks
that the committed notebook is exactly what the builder writes.
"""

from pathlib import Path

from cnnlab.notebook import assignment_notebook, dumps
from cnnlab.output import atomic_write_text

out = Path(__file__).resolve().parents[1] / "notebooks" / "assignment.ipynb"
atomic_write_text(out, dumps(assignment_notebook()))
print("wrote", out)
