"""The explorer as a notebook widget: kept as `cnnlab.widget` for notebooks written against it;
the implementation is cnnlab.explore.jupyter."""

from .explore.jupyter import INSTALL_HINT, ExplorerWidget, widget

__all__ = ["INSTALL_HINT", "ExplorerWidget", "widget"]
