"""The Gradio app, one module per tab.

Modules:
    context      what every tab shares: :class:`Context` (bundle, store, labels, curated
                 content), :class:`UserError`, UI value parsing, :func:`open_explorer`
    start, microscope, dashboard, steering, browse, labelling
                 one tab each: its pure handlers (plain functions of their inputs and the
                 context, tested without a running app) and ``layout(ctx)``, which creates the
                 tab's components, wires its own events and returns them as a dataclass
    circuits, circuit_view, circuits_tab
                 the Circuits tab: its handlers, its drawing (the graph, the node panel) and
                 its layout
    steer_table  the steering table (page, API, dashboard) -> list of Steer: the one check
    strength     relative strength (activation as a % of the feature's store maximum): how the
                 microscope and search by inference compare features across layers
    render       pure functions -> escaped HTML and plotly figures; the one colour scale
    ui           the Gradio-facing wrappers: a :class:`UserError` becomes a message
    layout       ``build_app(ctx) -> gr.Blocks``: composes the tabs; the wiring between tabs only

May import: ``explorer``'s library modules (bundle, encode, steer, labels, explanations, store,
paths), never ``explorer.__main__`` nor ``precompute``. Gradio is imported only by ``ui``,
``layout`` and the tab modules; ``context`` and ``render`` stay free of it, and so does importing
this package: the command line (``python -m explorer encode``) imports :func:`open_explorer`
without Gradio, and :func:`build_app` loads it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from explorer.app.context import Context, UserError, open_explorer

if TYPE_CHECKING:
    from explorer.app.layout import build_app

__all__ = ["Context", "UserError", "build_app", "open_explorer"]


def __getattr__(name: str) -> Any:
    if name == "build_app":  # Gradio loads here, not at the package's import
        from explorer.app.layout import build_app

        return build_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
