"""The explorer inside a notebook: `widget(run[, run2])` shows the same page as `cnnlab explore`
inline in Jupyter, JupyterLab, VS Code and Colab.

Built on anywidget: the widget's front end is the page's own explore.js and explore.css (from
cnnlab/static, the files the standalone server serves) mounted on the page's own markup; only
the transport differs. The page's requests travel as the widget's custom messages to the kernel,
where `Explorer.request` answers them — the function the server's routes call — so there is one
implementation of the page and one of its API. Nothing is downloaded from a CDN: anywidget's
front end ships inside its Python package. Each widget's element ids get a suffix of their own
when it is drawn (explore.js), so two explorers in one notebook never share a control.

    from cnnlab.explore import widget
    widget("runs/quick-s0")                      # one run
    widget("runs/quick-s0", "runs/quick-bn-s0")  # two runs side by side
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import CnnlabError
from .explorer import Explorer
from .server import app_fragment

INSTALL_HINT = "pip install 'cnnlab[notebook]'"

try:    # the optional `notebook` extra
    import anywidget
    import traitlets
except ImportError:                      # pragma: no cover - widget() says how to install
    anywidget = None  # type: ignore[assignment]


def _static(name: str) -> str:
    return files("cnnlab").joinpath("static").joinpath(name).read_text(encoding="utf-8")


if anywidget is not None:
    class ExplorerWidget(anywidget.AnyWidget):
        """The explorer page as a notebook widget; `explorer` answers its requests."""

        _esm = _static("explore.js")
        _css = _static("explore.css")
        _html = traitlets.Unicode("").tag(sync=True)

        def __init__(self, explorer: Explorer, **kwargs: Any) -> None:
            super().__init__(_html=app_fragment(), **kwargs)
            self.explorer = explorer
            self.on_msg(self._on_request)

        def _on_request(self, _widget, content, _buffers) -> None:
            """One page request {id, method, path, body} → {id, ok, data | error}."""
            if not isinstance(content, dict) or "id" not in content:
                return
            try:
                data = self.explorer.request(str(content.get("method", "")), str(content.get("path", "")),
                                             content.get("body"))
                self.send({"id": content["id"], "ok": True, "data": data})
            except CnnlabError as e:
                self.send({"id": content["id"], "ok": False, "error": str(e)})


def widget(run: str | Path, run2: str | Path | None = None, data_dir: str | Path | None = None) -> ExplorerWidget:
    """The explorer for one run (or two, side by side) as a notebook widget. `data_dir`: where
    the MNIST files are (for the test images; default: the cache, as for `cnnlab train`)."""
    if anywidget is None:
        raise CnnlabError(f"the notebook widget needs its optional dependencies: {INSTALL_HINT}")
    runs = [Path(run)] + ([Path(run2)] if run2 is not None else [])
    explorer = Explorer(runs, data_dir=data_dir)
    explorer.info()                     # layer tables and filters once, and any mismatch now
    explorer.preload_test_set()
    return ExplorerWidget(explorer)
