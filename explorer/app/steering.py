"""The Steering tab: default and steered completions side by side, streamed, with up to eight
features added, clamped or ablated; the steering table <-> the list of steers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from explorer.app.context import Context, UserError, parse_float, parse_int
from explorer.app.ui import ui, ui_stream
from explorer.steer import (
    MAX_FREQ_PENALTY,
    MAX_NEW_TOKENS,
    MAX_SEED,
    MAX_STRENGTH,
    MAX_TEMPERATURE,
    METHODS,
    GenerationConfig,
    Steer,
    SteerError,
    generate_pair,
)

TAB_ID = "steer"
MAX_STEERS = 8
STEER_COLUMNS = ("layer", "feature", "strength", "method", "label")


def default_strength(ctx: Context, layer: Any, feature: Any) -> float:
    """A feature's max activation in the store: adding it once is a visible but sane push."""
    layer_n, feature_n = ctx.check_feature(layer, feature)
    if ctx.store is None:
        return 10.0
    value = float(ctx.summary_layer(layer_n)["max_act"].iat[feature_n])
    return round(value, 2) if value > 0 else 10.0


def add_steer(
    ctx: Context,
    steers: list[dict[str, Any]] | None,
    layer: Any,
    feature: Any,
    strength: Any,
    method: str,
) -> list[dict[str, Any]]:
    """The steering list with one more feature (a new list; at most 8)."""
    layer_n, feature_n = ctx.check_feature(layer, feature)
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}")
    if strength is None or (isinstance(strength, str) and not strength.strip()):
        value = default_strength(ctx, layer_n, feature_n)
    else:
        value = parse_float(strength, "strength", -MAX_STRENGTH, MAX_STRENGTH)
    current = list(steers or [])
    if len(current) >= MAX_STEERS:
        raise UserError("at most 8 steering features at once: remove one first")
    label = ctx.label_of(layer_n, feature_n)
    current.append(
        {
            "layer": layer_n,
            "feature": feature_n,
            "strength": value,
            "method": method,
            "label": label,
        }
    )
    return current


def steer(
    ctx: Context,
    prompt: str,
    steers: list[dict[str, Any]] | None,
    temperature: Any = 0.7,
    max_new_tokens: Any = 40,
    seed: Any = 0,
    freq_penalty: Any = 0.0,
) -> Iterator[tuple[str, str, str]]:
    """Stream ``(default, steered, status)`` as the two completions grow."""
    try:
        cfg = GenerationConfig(
            max_new_tokens=parse_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS),
            temperature=parse_float(temperature, "temperature", 0.0, MAX_TEMPERATURE),
            seed=parse_int(seed, "seed", 0, MAX_SEED),
            freq_penalty=parse_float(
                freq_penalty, "frequency penalty", -MAX_FREQ_PENALTY, MAX_FREQ_PENALTY
            ),
        )
        chosen = [
            Steer(int(s["layer"]), int(s["feature"]), float(s["strength"]), str(s["method"]))
            for s in steers or []
        ]
        if not chosen:
            raise UserError("add at least one feature to steer with")
        stream = generate_pair(ctx.bundle, prompt, cfg, chosen)
        for c in stream:
            status = f"{max(c.n_tokens)} tokens in {c.seconds:.1f} s"
            if c.done:
                why = {"eos": "end of text", "length": "token limit", "time": "time limit"}
                status += f" — stopped at the {why.get(c.stop_reason, c.stop_reason)}"
            if c.prompt_truncated:
                status += " (only the end of the prompt was used)"
            yield c.texts[0], c.texts[1], status
    except SteerError as e:
        raise UserError(str(e)) from None


def steer_rows(steers: list[dict[str, Any]]) -> pd.DataFrame:
    """The list of steers as the steering table."""
    return pd.DataFrame(
        [[s[c] for c in STEER_COLUMNS] for s in steers], columns=list(STEER_COLUMNS)
    )


def steers_from_table(table: Any) -> list[dict[str, Any]]:
    """The steering table (as the UI or an API client sends it) as a list of dicts.

    Rows with an empty layer and feature are skipped (a row the user is still filling in); a
    cell that is not a number raises :class:`UserError` naming the row.
    """
    if table is None:
        return []
    if isinstance(table, dict):  # API clients: {"headers": [...], "data": [[...]]}
        headers, data = list(table.get("headers") or STEER_COLUMNS), table.get("data") or []
    else:
        headers, data = [str(c) for c in table.columns], table.values.tolist()
    out = []
    for i, row in enumerate(data, 1):
        cells = dict(zip(headers, row, strict=False))
        if all(str(cells.get(c, "")).strip() in ("", "nan", "None") for c in ("layer", "feature")):
            continue
        out.append(
            {
                "layer": parse_int(cells.get("layer"), f"row {i}: layer"),
                "feature": parse_int(cells.get("feature"), f"row {i}: feature", 0),
                "strength": parse_float(
                    cells.get("strength"), f"row {i}: strength", -MAX_STRENGTH, MAX_STRENGTH
                ),
                "method": str(cells.get("method") or "add").strip(),
                "label": str(cells.get("label") or ""),
            }
        )
    return out


@dataclass
class SteeringTab:
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
    gen_status: gr.Markdown
    default_out: gr.Textbox
    steered_out: gr.Textbox


def layout(ctx: Context) -> SteeringTab:
    """The tab's components and its own events (add, clear, generate)."""
    layer_names = [str(n) for n in ctx.layers]
    prompt = gr.Textbox("I went for a walk and", lines=2, label="Prompt", elem_id="steer-prompt")
    with gr.Row():
        s_layer = gr.Dropdown(layer_names, value=layer_names[-1], label="Layer")
        s_feature = gr.Number(0, label="Feature", precision=0, minimum=0)
        s_strength = gr.Textbox(label="Strength (blank: the feature's max activation)")
        s_method = gr.Radio(["add", "clamp", "ablate"], value="add", label="Method")
    with gr.Row():
        add_btn = gr.Button("Add feature", elem_id="add-steer")
        clear_btn = gr.Button("Clear features")
    steer_table = gr.Dataframe(
        headers=list(STEER_COLUMNS),
        label="Steering with (edit a strength or method in place)",
        interactive=True,
        elem_id="steer-table",
    )
    with gr.Row():
        temperature = gr.Slider(0, 2, 0.7, step=0.05, label="Temperature (0: greedy)")
        max_new = gr.Slider(1, 128, 40, step=1, label="Max new tokens")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
        freq = gr.Slider(0, 2, 0.0, step=0.1, label="Frequency penalty")
    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
    gen_status = gr.Markdown(elem_id="gen-status")
    with gr.Row():
        default_out = gr.Textbox(label="Default", lines=8, elem_id="default-out")
        steered_out = gr.Textbox(label="Steered", lines=8, elem_id="steered-out")

    def add_to_table(
        table: Any, layer: Any, feature: Any, strength: str, method: str
    ) -> pd.DataFrame:
        return steer_rows(
            add_steer(ctx, steers_from_table(table), layer, feature, strength, method)
        )

    add_btn.click(
        ui(add_to_table),
        [steer_table, s_layer, s_feature, s_strength, s_method],
        steer_table,
        api_name="add_steer",
    )
    clear_btn.click(lambda: steer_rows([]), None, steer_table)

    def generate(prompt: str, table: Any, *settings: Any) -> Iterator[tuple[str, str, str]]:
        yield from steer(ctx, prompt, steers_from_table(table), *settings)

    gen_btn.click(
        ui_stream(generate),
        [prompt, steer_table, temperature, max_new, seed, freq],
        [default_out, steered_out, gen_status],
        concurrency_limit=4,
        api_name="generate",
    )
    return SteeringTab(
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
        gen_status=gen_status,
        default_out=default_out,
        steered_out=steered_out,
    )
