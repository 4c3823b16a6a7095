"""Executing report.ipynb in a fresh kernel of this Python, and rendering it as report-notebook.pdf."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..errors import CnnlabError
from ..notebook import dumps

NOTEBOOK = "report.ipynb"
NOTEBOOK_PDF = "report-notebook.pdf"
CELL_TIMEOUT_S = 600          # per cell; every cell of the report's notebook takes seconds


class NotebookError(CnnlabError):
    """report.ipynb could not be executed: a cell failed (named in the message) or no kernel started."""


def _kernel_manager_class(tmp: Path) -> type:
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class ThisPython(AsyncKernelManager):
        """A kernel of the Python running cnnlab (never a `python3` kernelspec that points elsewhere),
        its connection file in `tmp` (removed afterwards, even when the kernel was killed)."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.connection_file = str(tmp / "kernel.json")

        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                               display_name="Python 3", language="python", metadata={})
            return self._kernel_spec

    return ThisPython


def run_notebook(nb: dict[str, Any], folder: str | Path, timeout: float = CELL_TIMEOUT_S) -> dict[str, Any]:
    """Execute `nb` top to bottom in a fresh kernel of this Python, with `folder` as its working
    directory; returns the executed notebook (execution counts and outputs filled in).

    A cell that fails (or runs past `timeout` seconds, or kills its kernel) is a NotebookError
    naming the cell: "report.ipynb: cell 14 (2.4 occlusion map) failed: ValueError: …". The
    kernel runs in a thread, so this process's SIGINT/SIGTERM handlers stay in place (nbclient
    would replace them in the main thread): a stop signal raises here as usual, and the kernel
    is killed on the way out."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:
        raise NotebookError(f"{NOTEBOOK} cannot be executed: {e.name} is not installed for {sys.executable} "
                            f"(pip install nbformat nbclient ipykernel)") from None

    node = nbformat.reads(dumps(nb), as_version=4)      # sources as strings, as nbclient wants them
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="cnnlab-kernel-") as tmp:
        env = _kernel_env(Path(tmp))
        client = NotebookClient(node, timeout=timeout, startup_timeout=120, kernel_name="python3",
                                kernel_manager_class=_kernel_manager_class(Path(tmp)), allow_errors=False,
                                shutdown_kernel="immediate",        # its work is done: no graceful wait
                                resources={"metadata": {"path": str(folder)}})
        stderr_path = Path(tmp) / "kernel-stderr.txt"
        outcome: dict[str, BaseException] = {}

        def execute() -> None:
            with open(stderr_path, "w", encoding="utf-8") as stderr:
                try:
                    client.execute(env=env, stderr=stderr)
                except BaseException as e:       # handed to the main thread
                    outcome["error"] = e

        worker = threading.Thread(target=execute, name="report.ipynb", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except BaseException:                    # a stop signal (Interrupted): the kernel goes too
            _kill_kernel(client)
            raise
        if "error" in outcome:
            raise _notebook_error(node, outcome["error"], stderr_path, timeout) from None
    return node


def _kernel_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the cnnlab this process runs, whatever the kernel's own sys.path would find first
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    env["IPYTHONDIR"] = str(tmp / "ipython")         # no user profile or startup files change the answers
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"      # debugpy's warning about frozen modules
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"   # not the CLI's Agg: figures are outputs
    return env


def _kill_kernel(client: Any) -> None:
    proc = getattr(getattr(getattr(client, "km", None), "provisioner", None), "process", None)
    if proc is not None:
        try:
            proc.kill()
        except OSError:
            pass


def _notebook_error(node: Any, e: BaseException, stderr_path: Path, timeout: float) -> NotebookError:
    """One line: which cell failed and how; or why the kernel did not run."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    index = next((i for i, cell in enumerate(node.cells) if cell.cell_type == "code"
                  and any(o.get("output_type") == "error" for o in cell.get("outputs", []))), None)
    if isinstance(e, CellExecutionError):
        what = f"{e.ename}: {_first_line(e.evalue)}" if getattr(e, "ename", None) else _first_line(str(e))
    elif isinstance(e, CellTimeoutError):
        what = f"it ran for more than {timeout:g} s"
    elif isinstance(e, DeadKernelError):
        what = "the kernel died" + _stderr_tail(stderr_path)
    else:
        what = f"{type(e).__name__}: {_first_line(str(e))}"
    if index is None and isinstance(e, (CellTimeoutError, DeadKernelError)):
        index = _running(node)
    if index is not None:
        name = node.cells[index].get("metadata", {}).get("cnnlab", {}).get("cell", "")
        return NotebookError(f"{NOTEBOOK}: cell {index + 1}{f' ({name})' if name else ''} failed: {what}")
    if not any(cell.get("execution_count") for cell in node.cells if cell.cell_type == "code"):
        return NotebookError(f"{NOTEBOOK}: no Python kernel ran it ({what}{_stderr_tail(stderr_path)}); ipykernel and "
                             f"nbclient must be installed for {sys.executable} (pip install ipykernel nbclient)")
    return NotebookError(f"{NOTEBOOK} could not be executed: {what}")


def _running(node: Any) -> int | None:
    """The first code cell without an execution count: the one that was running."""
    return next((i for i, cell in enumerate(node.cells) if cell.cell_type == "code" and not cell.get("execution_count")),
                None)


def _first_line(s: str) -> str:
    s = " ".join(str(s).strip().splitlines()[:1]) or "(no message)"
    return s if len(s) <= 300 else s[:297] + "…"


def _stderr_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {_first_line(lines[-1])}" if lines else ""


PRINT_CSS = """
@page { size: A4; margin: 15mm 14mm 16mm 14mm;
        @bottom-center { content: "report.ipynb, executed — page " counter(page) " of " counter(pages);
                         font: 7.5pt sans-serif; color: #777; } }
body { font: 9.5pt/1.4 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #111; margin: 0; }
h1 { font-size: 16pt; margin: 0 0 0.5em; } h2 { font-size: 12.5pt; margin: 1.2em 0 0.3em; break-after: avoid; }
h3 { font-size: 11pt; break-after: avoid; }
.anchor-link { display: none; }
.cnnlab-source > p { break-after: avoid; }
blockquote { margin: 0.4em 0; padding: 0.1em 0.8em; border-left: 3px solid #bbb; color: #333; }
code { font: 8.5pt "DejaVu Sans Mono", monospace; background: #f3f3f3; padding: 0 2px; }
pre { font: 7.4pt/1.32 "DejaVu Sans Mono", monospace; white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
pre code { background: none; padding: 0; }
.cell { margin: 0.35em 0; }
.text_cell .prompt { display: none; }
.prompt { font: 7pt "DejaVu Sans Mono", monospace; color: #3949ab; margin: 0.5em 0 1px; break-after: avoid; }
.output_prompt { display: none; }
.input_area { border: 1px solid #cfd4da; background: #f7f8fa; padding: 4px 6px; border-radius: 2px; }
.output_area { margin: 3px 0 0 0; }
.output_subarea { padding: 0 0 0 6px; border-left: 2px solid #e3e6ea; margin: 2px 0; }
.output_stderr { color: #a00; }
.output_png img, img { max-width: 100%; max-height: 125mm; width: auto; height: auto; break-inside: avoid; }
table { border-collapse: collapse; font-size: 8pt; } td, th { border: 1px solid #ddd; padding: 1px 4px; }
"""


def notebook_pdf(nb: dict[str, Any], pdf_path: str | Path, base_url: str | Path | None = None) -> None:
    """The executed notebook as an A4 PDF: nbconvert's basic HTML (each code cell with its "In [n]:"
    prompt, the outputs as stored), a print style sheet of its own that wraps long code lines,
    WeasyPrint. Nothing is fetched from the network and no script runs."""
    import logging

    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter
    from weasyprint import HTML

    from ..output import atomic_write_bytes

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    node = nbformat.from_dict(nb)
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(node)
    body = re.sub(r"<script\b.*?</script>", "", body, flags=re.S | re.I)
    code_css = HtmlFormatter(style="default").get_style_defs(".highlight")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>report.ipynb</title>'
            f"<style>{code_css}\n{PRINT_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
    pdf = HTML(string=page, base_url=str(base_url) if base_url is not None else None).write_pdf()
    atomic_write_bytes(Path(pdf_path), pdf)
