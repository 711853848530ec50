"""The Steering tab: default and steered completions side by side, streamed, with up to eight
features added, clamped or ablated (a transcoder feature, ``tc``, is added to its layer's MLP
output: add only).

One way in: every entry point here (the Generate and Add buttons, the dashboard's "steer with
this feature", an API client) reads the steering table with
:func:`explorer.app.steer_table.parse_steers`, and the settings with :func:`settings`. Gradio's
own checks are off for these events (``preprocess=False``, :func:`unchecked`), so a malformed
value reaches those functions, and their message, instead of failing inside Gradio.

An error keeps the screen: :func:`generate_view` answers a bad request with the completions
already shown and a status line saying what is wrong; the Add button shows a warning and leaves
the table as it was. A Stop button cancels a running generation.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from explorer.app import sources
from explorer.app.context import Context, UserError
from explorer.app.render import esc
from explorer.app.start import demo_table
from explorer.app.steer_table import (
    MAX_STEERS,
    STEER_COLUMNS,
    add_steer,
    default_strength,
    number,
    parse_steers,
    to_table,
    whole_number,
)
from explorer.steer import (
    MAX_FREQ_PENALTY,
    MAX_NEW_TOKENS,
    MAX_SEED,
    MAX_TEMPERATURE,
    METHODS,
    GenerationConfig,
    SteerError,
    generate_pair,
)

__all__ = [  # the table's functions too: callers of this tab need not know where they live
    "MAX_STEERS",
    "STEER_COLUMNS",
    "TAB_ID",
    "SteeringTab",
    "add_steer",
    "default_strength",
    "demo_values",
    "generate_view",
    "layout",
    "parse_steers",
    "settings",
    "steer",
    "to_table",
    "with_feature",
]

logger = logging.getLogger(__name__)

TAB_ID = "steer"
_WHY = {"eos": "end of text", "length": "token limit", "time": "time limit"}


def with_feature(
    ctx: Context,
    steering: Any,
    layer: Any,
    feature: Any,
    strength: Any = None,
    method: Any = "add",
    source: Any = "res",
) -> pd.DataFrame:
    """:func:`add_steer`, as the page's table."""
    return to_table(ctx, add_steer(ctx, steering, layer, feature, strength, method, source))


def demo_values(ctx: Context, index: Any) -> tuple[Any, ...]:
    """The Steering tab's inputs for curated steering demo ``index`` (a row of the demo tables):
    prompt, steering table, temperature, max new tokens, seed, frequency penalty."""
    demos = ctx.content.get("steering", [])
    i = whole_number(index, "demo", 0, max(len(demos) - 1, 0))
    if not demos:
        raise UserError("this preset has no steering demos")
    d = demos[i]
    table = with_feature(ctx, None, d["layer"], d["feature"], d["strength"], d["method"])
    return (
        d["prompt"], table, float(d.get("temperature", 0.7)), int(d.get("max_new_tokens", 32)),
        int(d["seed"]), 0.0,
    )  # fmt: skip


# --- generation ---------------------------------------------------------------------------------


def settings(
    temperature: Any, max_new_tokens: Any, seed: Any, frequency_penalty: Any
) -> GenerationConfig:
    """The sampling settings, checked, as the generator takes them."""
    cfg = GenerationConfig(
        max_new_tokens=whole_number(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS),
        temperature=number(temperature, "temperature", 0.0, MAX_TEMPERATURE),
        seed=whole_number(seed, "seed", 0, MAX_SEED),
        freq_penalty=number(
            frequency_penalty, "frequency penalty", -MAX_FREQ_PENALTY, MAX_FREQ_PENALTY
        ),
    )
    return cfg


def steer(
    ctx: Context,
    prompt: Any,
    steering: Any,
    temperature: Any = 0.7,
    max_new_tokens: Any = 40,
    seed: Any = 0,
    frequency_penalty: Any = 0.0,
) -> Iterator[tuple[str, str, str]]:
    """Stream ``(default, steered, status)`` as the two completions grow.

    ``steering`` is anything :func:`parse_steers` takes. Every check runs before the first token:
    a bad request raises :class:`UserError` on the first ``next``.
    """
    try:
        cfg = settings(temperature, max_new_tokens, seed, frequency_penalty)
        chosen = parse_steers(ctx, steering)
        if not chosen:
            raise UserError("add at least one feature to steer with")
        stream = generate_pair(ctx.bundle, prompt, cfg, chosen)
        for c in stream:
            status = f"{max(c.n_tokens)} tokens in {c.seconds:.1f} s"
            if c.done:
                status += f" — stopped at the {_WHY.get(c.stop_reason, c.stop_reason)}"
            if c.prompt_truncated:
                status += " (only the end of the prompt was used)"
            yield c.texts[0], c.texts[1], status
    except SteerError as e:
        raise UserError(str(e)) from None


Shown = tuple[str, str]
"""The completions on the page, ``(default, steered)``: kept per session (a ``gr.State``)."""


def generate_view(
    ctx: Context,
    prompt: Any,
    steering: Any,
    temperature: Any,
    max_new_tokens: Any,
    seed: Any,
    frequency_penalty: Any,
    shown: Shown | None = None,
) -> Iterator[tuple[str, str, str, Shown]]:
    """What the page shows while generating: ``(default, steered, status HTML, shown)``.

    A bad request, or a failure mid-way, never raises: it yields the completions already on the
    page (``shown``, or what this run streamed so far) and a status line saying what went
    wrong, so the table, the prompt and the completions stay on screen. The status is escaped.
    """
    last: Shown = shown if shown is not None else ("", "")
    try:
        for default, steered, status in steer(
            ctx, prompt, steering, temperature, max_new_tokens, seed, frequency_penalty
        ):
            last = (default, steered)
            yield default, steered, esc(status), last
    except UserError as err:
        yield *last, _error_line(f"Not generated: {err}"), last
    except Exception as err:
        logger.error("unexpected error while generating", exc_info=err)
        msg = "something went wrong on the server (it is logged); try again or with other input"
        yield *last, _error_line(f"Stopped: {msg}"), last


def _error_line(message: str) -> str:
    """The status line for a request that failed: the message, escaped for HTML.

    Quotes are kept as they are (this is element text, never an attribute), so an API client
    reads ``row 1: method must be add, clamp or ablate, not 'mul'`` plainly.
    """
    text = html.escape(message, quote=False)
    return f'<span class="gse-error" style="color: #b30000">{text}</span>'


# --- layout ---------------------------------------------------------------------------------------


def unchecked(table: gr.Dataframe) -> gr.Dataframe:
    """``table``, with its value passed to handlers exactly as the client sent it.

    Gradio checks a Dataframe's value against its data model (``{"headers", "data"}``) before any
    handler runs, so a client that sends a bare list of rows, or a dict without ``headers``, gets
    an opaque "the upstream app has raised an exception". Without the data model, and with a
    ``preprocess`` that keeps the value as it is (on this one instance; the API's documented
    schema is kept, computed first), every event's handler gets the value unchanged and hands it
    to :func:`parse_steers`, which says what is wrong with it. (Not a subclass: Gradio writes a
    ``.pyi`` file beside any module that defines a component class.)
    """
    table.api_info()  # cached on the instance: the API page still shows the Dataframe's schema
    table.data_model = None  # type: ignore[assignment]
    table.preprocess = _as_sent  # type: ignore[method-assign]
    return table


def _as_sent(payload: Any) -> Any:
    """The table's value as the client sent it (see :func:`unchecked`)."""
    return payload


@dataclass
class SteeringTab:
    source: gr.Radio
    prompt: gr.Textbox
    layer: gr.Dropdown
    feature: gr.Number
    strength: gr.Textbox
    method: gr.Radio
    add_btn: gr.Button
    clear_btn: gr.Button
    steer_table: gr.Dataframe
    temperature: gr.Slider
    max_new: gr.Slider
    seed: gr.Number
    freq: gr.Slider
    gen_btn: gr.Button
    stop_btn: gr.Button
    gen_status: gr.HTML
    default_out: gr.Textbox
    steered_out: gr.Textbox
    demos_table: gr.Dataframe


def layout(ctx: Context) -> SteeringTab:
    """The tab's components and its own events (add, clear, generate, stop).

    The add and generate events take their inputs unprocessed (``preprocess=False``): each value
    is checked once, here, with this tab's messages.
    """
    layer_names = [str(n) for n in ctx.layers]
    prompt = gr.Textbox("I went for a walk and", lines=2, label="Prompt", elem_id="steer-prompt")
    if len(ctx.sources) > 1:
        gr.Markdown(sources.TC_NOTE, elem_id="steer-tc-note")
    with gr.Row():
        s_source = sources.radio(ctx, "s-source")
        s_layer = gr.Dropdown(layer_names, value=layer_names[-1], label="Layer")
        s_feature = gr.Number(0, label="Feature", precision=0, minimum=0)
        s_strength = gr.Textbox(
            label="Strength (blank: the recommended strength, else its max activation)"
        )
        s_method = gr.Radio(list(METHODS), value="add", label="Method")
    with gr.Row():
        add_btn = gr.Button("Add feature", elem_id="add-steer")
        clear_btn = gr.Button("Clear features")
    steer_table = unchecked(
        gr.Dataframe(
            headers=list(STEER_COLUMNS),
            label="Steering with (edit a strength or method in place; at most 8 rows)",
            interactive=True,
            elem_id="steer-table",
        )
    )
    with gr.Row():
        temperature = gr.Slider(0, 2, 0.7, step=0.05, label="Temperature (0: greedy)")
        max_new = gr.Slider(1, MAX_NEW_TOKENS, 40, step=1, label="Max new tokens")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
        freq = gr.Slider(0, 2, 0.0, step=0.1, label="Frequency penalty")
    with gr.Row():
        gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-generate")
    gen_status = gr.HTML(elem_id="gen-status")
    with gr.Row():
        default_out = gr.Textbox(label="Default", lines=8, elem_id="default-out")
        steered_out = gr.Textbox(label="Steered", lines=8, elem_id="steered-out")
    shown = gr.State(("", ""))
    demos_table = demo_table(ctx, "steer-demos")

    sources.follow(ctx, s_source, s_layer)

    def add_steer(
        steering: Any, layer: Any, feature: Any, strength: Any, method: Any, source: Any = "res"
    ) -> Any:
        try:
            return with_feature(ctx, steering, layer, feature, strength, method, source)
        except UserError as err:
            gr.Warning(esc(str(err)))
            return gr.skip()

    add_btn.click(
        add_steer,
        [steer_table, s_layer, s_feature, s_strength, s_method, s_source],
        steer_table,
        api_name="add_steer",
        preprocess=False,
    )
    clear_btn.click(lambda: to_table(ctx, []), None, steer_table, api_visibility="private")

    # The parameter names are the API's: gradio_client clients call
    # predict(prompt=..., steering=..., temperature=..., ...).
    def generate(
        prompt: str,
        steering: Any,
        temperature: float,
        max_new_tokens: int,
        seed: int,
        frequency_penalty: float,
        shown: Shown,
    ) -> Iterator[tuple[str, str, str, Shown]]:
        yield from generate_view(
            ctx, prompt, steering, temperature, max_new_tokens, seed, frequency_penalty, shown
        )

    running = gen_btn.click(
        generate,
        [prompt, steer_table, temperature, max_new, seed, freq, shown],
        [default_out, steered_out, gen_status, shown],
        concurrency_limit=4,
        api_name="generate",
        preprocess=False,
    )
    # Stop cancels the run; the page then runs the run's failure handler, after it has dropped
    # the run's last messages (a status set by the Stop click itself could arrive before them).
    stop_btn.click(None, None, None, cancels=[running])
    running.failure(
        lambda: "Stopped: the completions are what was generated before Stop.",
        None,
        gen_status,
        api_visibility="private",
    )
    return SteeringTab(
        source=s_source,
        prompt=prompt,
        layer=s_layer,
        feature=s_feature,
        strength=s_strength,
        method=s_method,
        add_btn=add_btn,
        clear_btn=clear_btn,
        steer_table=steer_table,
        temperature=temperature,
        max_new=max_new,
        seed=seed,
        freq=freq,
        gen_btn=gen_btn,
        stop_btn=stop_btn,
        gen_status=gen_status,
        default_out=default_out,
        steered_out=steered_out,
        demos_table=demos_table,
    )
