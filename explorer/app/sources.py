"""Sources on the page: the choice between the residual SAEs' features (``res``) and the
transcoders' (``tc``) beside a layer and feature, and the layers each one offers.

A source is shown by its short name (``res``, ``tc``: :data:`explorer.store.schema.SHORT`) and
checked by :meth:`explorer.app.context.Context.source`; a feature is named with
:func:`explorer.store.schema.feature_name` (``L9 tc #456``) wherever it is shown.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.app.context import Context
from explorer.store.schema import RES, SHORT, TRANSCODER

NAMES = {RES: "Residual SAE (res)", TRANSCODER: "Transcoder (tc)"}
TC_NOTE = (
    "A transcoder (tc) feature reads the MLP's input (`blocks.N.ln2.hook_normalized`) and writes "
    "its output: steering with it adds strength × its decoder direction to the MLP's output "
    "(`blocks.N.hook_mlp_out`), with add only."
)


def choices(ctx: Context) -> list[tuple[str, str]]:
    """The source radio's ``(name, value)`` choices: the sources the app offers."""
    return [(NAMES[s], SHORT[s]) for s in ctx.sources]


def radio(ctx: Context, elem_id: str, label: str = "Source") -> gr.Radio:
    """A source choice (hidden when the bundle offers one source only)."""
    return gr.Radio(
        choices(ctx), value=SHORT[RES], label=label, elem_id=elem_id, visible=len(ctx.sources) > 1
    )


def layer_names(ctx: Context, source: Any = RES) -> list[str]:
    """The layers of a source, as a layer dropdown's choices."""
    return [str(n) for n in ctx.source_layers(ctx.source(source))]


def layers_update(ctx: Context, source: Any, layer: Any = None) -> Any:
    """A layer dropdown for ``source``: its layers, keeping ``layer`` when the source has it
    (else its last layer)."""
    names = layer_names(ctx, source)
    value = str(layer) if str(layer) in names else names[-1]
    return gr.Dropdown(choices=names, value=value)


def follow(ctx: Context, source: gr.Radio, layer: gr.Dropdown) -> None:
    """When the user picks another source, ``layer`` offers that source's layers."""

    def source_layers(source: Any, layer: Any) -> Any:
        return layers_update(ctx, source, layer)

    source.input(source_layers, [source, layer], layer, api_visibility="private")
