"""The Gradio app: layout and wiring only; every action is a method of :class:`Explorer`.

``build_app(explorer)`` returns the ``gr.Blocks``; ``python -m explorer`` builds the bundle, store
and label database and launches it. Errors a user can cause come back as :class:`UserError` and are
shown as a message (``gr.Error``); anything unexpected is logged with its traceback on the server
and the user sees one line saying so.
"""

from __future__ import annotations

import functools
import logging
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Imported at module level (this module is the Gradio app, loaded only to serve it): Gradio
# finds ``gr.SelectData`` / ``gr.Request`` parameters through type hints resolved in this
# module's globals.
import gradio as gr

from explorer.handlers import DENSITY_BANDS, Explorer, UserError, load_curated

logger = logging.getLogger(__name__)


INTRO = """\
## What is an SAE feature?
A language model turns each token into a long vector of numbers (the *residual stream*). A
**sparse autoencoder (SAE)** rewrites that vector as a sum of a few directions out of thousands —
its **features**. Each feature fires on some tokens and not others, and many of them mean
something a person can name: "the word *near*", "Python keywords", "speech after a quote".
This explorer shows which features fire on your text, what each feature fires on across a corpus,
and what happens when you push the model along a feature's direction (*steering*).

**A guided path:** 1. pick an example text below and press **Encode** on the *Microscope* tab;
2. click a token and open its strongest feature; 3. read the feature's top examples and interval
samples on its page; 4. press **Steer with this feature** and compare the two completions.
"""

HIST_NOTE = (
    "How often the feature fires at each strength, over the corpus (tokens where it is 0 are left "
    "out). The dashed line is its strongest activation on your test text."
)
LOGITS_NOTE = (
    "The tokens whose next-token logits this feature's decoder direction raises (left) or lowers "
    "(right) most, through the model's unembedding: a hint of what it makes the model say."
)
INTERVAL_NOTE = (
    "Examples drawn at random from equal slices of the activation range: they show what the "
    "feature does when it fires weakly, not only at its peak. The percentage is the slice's share "
    "of all the feature's activations."
)


def _as_message(fn: Callable[..., Any], err: Exception) -> Exception:
    """The ``gr.Error`` a user sees for ``err``: its message if it is theirs, else one line."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, UserError):
        return gr.Error(str(err), print_exception=False)
    logger.error("unexpected error in %s", fn.__name__, exc_info=err)
    return gr.Error(
        "something went wrong on the server (it is logged); try again or with other input",
        print_exception=False,
    )


def _ui(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show :class:`UserError` as a message and unexpected errors as one line (logged in full)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _as_message(fn, err) from None

    return wrapper


def _ui_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`_ui` for a generator (a streaming handler)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            yield from fn(*args, **kwargs)
        except Exception as err:
            raise _as_message(fn, err) from None

    return wrapper


def build_app(ex: Explorer, title: str = "Gemma Scope Explorer") -> gr.Blocks:
    """The app's layout and wiring over one :class:`Explorer`."""
    curated = load_curated()
    texts = curated["texts"] or ["The cat sat on the mat. It was a sunny day in Paris."]
    layer_names = [str(n) for n in ex.layers]
    store_line = (
        f"store: {ex.store.manifest.tokens or 0:,} corpus tokens"
        if ex.store is not None
        else "no feature store (dashboards and browse are off)"
    )

    with gr.Blocks(title=title) as demo:
        enc_state = gr.State(None)
        gr.Markdown(
            f"# {title}\nbundle **{ex.bundle.spec.name}** · layers {', '.join(layer_names)} · "
            f"{store_line}"
        )
        with gr.Tabs(selected="start") as tabs:
            with gr.Tab("Start here", id="start"):
                gr.Markdown(INTRO)
                curated_rows = [
                    [f["layer"], f["feature"], f.get("label", ""), f.get("why", "")]
                    for f in curated["features"]
                ]
                curated_table = gr.Dataframe(
                    curated_rows,
                    headers=["layer", "feature", "label", "why it is interesting"],
                    label="Curated features (click a row to open it)",
                    interactive=False,
                    elem_id="curated",
                )

            with gr.Tab("Microscope", id="microscope"):
                text = gr.Textbox(texts[0], lines=3, label="Text", elem_id="micro-text")
                gr.Examples([[t] for t in texts], inputs=text, label="Example texts")
                with gr.Row():
                    layers = gr.CheckboxGroup(layer_names, value=layer_names, label="Layers")
                    metric = gr.Radio(
                        ["max activation", "active features"],
                        value="max activation",
                        label="Heatmap shows",
                    )
                    density = gr.Number(1.0, label="Hide features denser than (%)", minimum=0)
                    aggregate = gr.Radio(["max", "sum"], value="max", label="Whole-text ranking")
                encode_btn = gr.Button("Encode", variant="primary", elem_id="encode")
                status = gr.Markdown(elem_id="micro-status")
                tokens_view = gr.HighlightedText(
                    label="Tokens, shaded by their strongest feature (click one)",
                    show_legend=False,
                    elem_id="tokens",
                )
                gr.Markdown(
                    "Token × layer: the strongest non-dense feature's activation, or how "
                    "many features are active. BOS is not shown."
                )
                heatmap = gr.Plot(label="Tokens × layers")
                token_pick = gr.Dropdown(label="Token", choices=[], elem_id="token-pick")
                token_table = gr.Dataframe(
                    label="Features on this token (click a row to open its dashboard)",
                    interactive=False,
                    elem_id="token-table",
                )
                text_top = gr.Dataframe(
                    label="Top features for the whole text (click to open)",
                    interactive=False,
                    elem_id="text-top",
                )

            with gr.Tab("Feature", id="dashboard"):
                with gr.Row():
                    d_layer = gr.Dropdown(layer_names, value=layer_names[-1], label="Layer")
                    d_feature = gr.Number(0, label="Feature", precision=0, minimum=0)
                    open_btn = gr.Button("Open", variant="primary", elem_id="open-feature")
                    rand_btn = gr.Button("Random feature")
                    to_steer_btn = gr.Button("Steer with this feature", elem_id="to-steer")
                header = gr.HTML(elem_id="dash-header")
                with gr.Row():
                    quick_label = gr.Textbox(label="Label", scale=4, elem_id="quick-label")
                    quick_name = gr.Textbox(label="Your name (optional)", scale=2)
                    quick_save = gr.Button("Save label", scale=1, elem_id="quick-save")
                label_status = gr.Markdown(elem_id="label-status")
                gr.Markdown(HIST_NOTE)
                hist = gr.Plot(label="Activation histogram")
                gr.Markdown(LOGITS_NOTE)
                with gr.Row():
                    promoted = gr.Plot(label="Promoted tokens")
                    suppressed = gr.Plot(label="Suppressed tokens")
                neighbours = gr.Dataframe(
                    label="Nearest features by decoder cosine (click to open)", interactive=False
                )
                with gr.Row():
                    test_text = gr.Textbox(label="Test this feature on your text", scale=4)
                    test_btn = gr.Button("Test", scale=1, elem_id="test-feature")
                test_html = gr.HTML()
                gr.Markdown(
                    "### Top activations\nThe corpus contexts where it fires most; the "
                    "outlined token is the one it was chosen for."
                )
                top_html = gr.HTML(elem_id="top-examples")
                gr.Markdown(f"### Interval samples\n{INTERVAL_NOTE}")
                intervals_html = gr.HTML()

            with gr.Tab("Steering", id="steer"):
                prompt = gr.Textbox(
                    "I went for a walk and", lines=2, label="Prompt", elem_id="steer-prompt"
                )
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

            with gr.Tab("Browse & search", id="browse"):
                with gr.Row():
                    b_layer = gr.Dropdown(["all", *layer_names], value="all", label="Layer")
                    b_query = gr.Textbox(label="Search labels and top tokens", elem_id="b-query")
                    b_sort = gr.Dropdown(
                        ["density", "max_act", "n_fires", "feature"],
                        value="density",
                        label="Sort by",
                    )
                    b_desc = gr.Checkbox(True, label="Descending")
                    b_dense = gr.Checkbox(False, label="Hide dense")
                    b_dead = gr.Checkbox(True, label="Hide dead")
                b_btn = gr.Button("Search", variant="primary", elem_id="browse-btn")
                b_table = gr.Dataframe(
                    label="Features (click to open)", interactive=False, elem_id="browse-table"
                )
                gr.Markdown("### Search by inference: which features are most active on a text?")
                with gr.Row():
                    si_text = gr.Textbox(label="Text", scale=4)
                    si_density = gr.Number(1.0, label="Hide features denser than (%)", minimum=0)
                    si_btn = gr.Button("Find features", scale=1)
                si_table = gr.Dataframe(
                    headers=["layer", "feature", "label", "max act", "tokens", "density %"],
                    label="Most active features (click to open)",
                    interactive=False,
                )

            with gr.Tab("Label", id="label"):
                with gr.Row():
                    q_layer = gr.Dropdown(["all", *layer_names], value="all", label="Layer")
                    q_band = gr.Dropdown(["any", *DENSITY_BANDS], value="any", label="Density")
                    q_next = gr.Button("Next unlabelled feature", elem_id="next-unlabelled")
                with gr.Row():
                    l_layer = gr.Dropdown(layer_names, value=layer_names[-1], label="Layer")
                    l_feature = gr.Number(0, label="Feature", precision=0, minimum=0)
                l_header = gr.HTML(elem_id="l-header")
                l_examples = gr.HTML()
                l_label = gr.Textbox(label="Label", elem_id="l-label")
                l_notes = gr.Textbox(label="Notes", lines=2)
                with gr.Row():
                    l_conf = gr.Radio(["low", "medium", "high"], value="medium", label="Confidence")
                    l_name = gr.Textbox(label="Labeller")
                l_save = gr.Button("Save and next", variant="primary", elem_id="l-save")
                l_status = gr.Markdown(elem_id="l-status")
                l_history = gr.Dataframe(
                    label="History of this feature's labels", interactive=False
                )
                with gr.Row():
                    exp_csv = gr.Button("Export CSV")
                    exp_json = gr.Button("Export JSON")
                    exp_file = gr.File(label="Export", interactive=False)
                with gr.Row():
                    imp_file = gr.File(
                        label="Import labels (CSV or JSON)", file_types=[".csv", ".json"]
                    )
                    imp_btn = gr.Button("Import")
                imp_status = gr.Markdown()

        # --- wiring -------------------------------------------------------------------------
        dash_outputs = [
            d_layer,
            d_feature,
            header,
            quick_label,
            hist,
            promoted,
            suppressed,
            neighbours,
            top_html,
            intervals_html,
            test_html,
            tabs,
        ]

        def open_feature(layer: Any, feature: Any, test: str = "") -> tuple[Any, ...]:
            v = ex.dashboard(layer, feature, test)
            return (
                str(v.layer),
                v.feature,
                v.header,
                v.label,
                v.histogram,
                v.promoted,
                v.suppressed,
                v.neighbours,
                v.top_examples,
                v.intervals,
                v.test,
                gr.Tabs(selected="dashboard"),
            )

        def open_from_row(evt: gr.SelectData) -> tuple[Any, ...]:
            row = evt.row_value
            return open_feature(row[0], row[1])

        def open_neighbour(layer: Any, evt: gr.SelectData) -> tuple[Any, ...]:
            return open_feature(layer, evt.row_value[0])

        def run_microscope(t: str, ls: list[str], m: str, d: Any, agg: str) -> tuple[Any, ...]:
            v = ex.microscope(t, ls, m, d, agg)
            first = v.token_choices[0][1] if v.token_choices else None
            return (
                v.highlighted,
                v.heatmap,
                v.text_top,
                v.status,
                v.encoding,
                gr.Dropdown(choices=v.token_choices, value=first),
                ex.token_features(v.encoding, first, d),
            )

        encode_btn.click(
            _ui(run_microscope),
            [text, layers, metric, density, aggregate],
            [tokens_view, heatmap, text_top, status, enc_state, token_pick, token_table],
            api_name="microscope",
        )
        token_pick.input(_ui(ex.token_features), [enc_state, token_pick, density], token_table)

        def pick_token(enc: Any, d: Any, evt: gr.SelectData) -> tuple[Any, ...]:
            return gr.Dropdown(value=evt.index), ex.token_features(enc, evt.index, d)

        tokens_view.select(_ui(pick_token), [enc_state, density], [token_pick, token_table])
        for table in (token_table, text_top, curated_table, b_table, si_table):
            table.select(_ui(open_from_row), None, dash_outputs)
        neighbours.select(_ui(open_neighbour), [d_layer], dash_outputs)
        open_btn.click(
            _ui(open_feature), [d_layer, d_feature], dash_outputs, api_name="open_feature"
        )
        test_btn.click(
            _ui(open_feature),
            [d_layer, d_feature, test_text],
            dash_outputs,
            api_name="test_feature",
        )

        def random_open(layer: Any) -> tuple[Any, ...]:
            return open_feature(*ex.random_feature("all"))

        rand_btn.click(_ui(random_open), [d_layer], dash_outputs)

        def quick_label_save(layer: Any, feature: Any, label: str, name: str) -> tuple[str, str]:
            message = ex.save_label(layer, feature, label, "", "medium", name)
            return message, ex.header(layer, feature)

        quick_save.click(
            _ui(quick_label_save),
            [d_layer, d_feature, quick_label, quick_name],
            [label_status, header],
            api_name="save_label",
        )

        def to_steer(table: Any, layer: Any, feature: Any) -> tuple[Any, ...]:
            new = ex.add_steer(steers_from_table(table), layer, feature, None, "add")
            return _steer_rows(new), gr.Tabs(selected="steer")

        to_steer_btn.click(_ui(to_steer), [steer_table, d_layer, d_feature], [steer_table, tabs])

        def add_steer(table: Any, layer: Any, feature: Any, strength: str, method: str) -> Any:
            return _steer_rows(
                ex.add_steer(steers_from_table(table), layer, feature, strength, method)
            )

        add_btn.click(
            _ui(add_steer),
            [steer_table, s_layer, s_feature, s_strength, s_method],
            steer_table,
            api_name="add_steer",
        )
        clear_btn.click(lambda: _steer_rows([]), None, steer_table)

        def generate(prompt: str, table: Any, *settings: Any) -> Any:
            yield from ex.steer(prompt, steers_from_table(table), *settings)

        gen_btn.click(
            _ui_stream(generate),
            [prompt, steer_table, temperature, max_new, seed, freq],
            [default_out, steered_out, gen_status],
            concurrency_limit=4,
            api_name="generate",
        )

        b_btn.click(
            _ui(ex.browse),
            [b_layer, b_query, b_sort, b_desc, b_dense, b_dead],
            b_table,
            api_name="browse",
        )

        def search_inference(t: str, d: Any) -> Any:
            return ex.microscope(t, max_density_pct=d).text_top

        si_btn.click(
            _ui(search_inference), [si_text, si_density], si_table, api_name="search_inference"
        )

        label_outputs = [l_layer, l_feature, l_header, l_examples, l_history]

        def show_for_label(layer: Any, feature: Any) -> tuple[Any, ...]:
            v = ex.dashboard(layer, feature)
            return (
                str(v.layer),
                v.feature,
                v.header,
                v.top_examples,
                ex.label_history(v.layer, v.feature),
            )

        def next_unlabelled(layer: Any, band: str) -> tuple[Any, ...]:
            return show_for_label(*ex.next_unlabelled(layer, band, random.Random()))

        q_next.click(
            _ui(next_unlabelled), [q_layer, q_band], label_outputs, api_name="next_unlabelled"
        )
        l_feature.submit(_ui(show_for_label), [l_layer, l_feature], label_outputs)

        def save_and_next(
            layer: Any,
            feature: Any,
            label: str,
            notes: str,
            conf: str,
            name: str,
            q_l: Any,
            band: str,
        ) -> tuple[Any, ...]:
            message = ex.save_label(layer, feature, label, notes, conf, name)
            try:
                shown = next_unlabelled(q_l, band)
            except UserError as e:
                shown = show_for_label(layer, feature)
                message += f" · {e}"
            return (*shown, message, "", "")

        l_save.click(
            _ui(save_and_next),
            [l_layer, l_feature, l_label, l_notes, l_conf, l_name, q_layer, q_band],
            [*label_outputs, l_status, l_label, l_notes],
            api_name="save_and_next",
        )

        def export(fmt: str) -> str:
            body = ex.labels.export_csv() if fmt == "csv" else ex.labels.export_json()
            out = Path(tempfile.mkdtemp(prefix="gse-labels-")) / f"labels.{fmt}"
            out.write_text(body, encoding="utf-8")
            return str(out)

        exp_csv.click(_ui(lambda: export("csv")), None, exp_file)
        exp_json.click(_ui(lambda: export("json")), None, exp_file)

        def import_labels(path: Any) -> str:
            from explorer.labels import LabelError

            if not path:
                raise UserError("choose a CSV or JSON file to import first")
            try:
                report = ex.labels.import_file(Path(str(path)))
            except LabelError as e:
                raise UserError(str(e)) from None
            lines = [f"Imported {report.added} labels; {report.duplicates} duplicates skipped."]
            lines += [f"- {err}" for err in report.errors]
            return "\n".join(lines)

        imp_btn.click(_ui(import_labels), [imp_file], imp_status, api_name="import_labels")

        def from_url(request: gr.Request) -> tuple[Any, ...]:
            params = dict(request.query_params) if request else {}
            if "feature" not in params:
                return tuple(gr.skip() for _ in dash_outputs)
            layer = params.get("layer", layer_names[-1])
            try:
                return open_feature(layer, params["feature"])
            except UserError as e:
                gr.Warning(f"cannot open the feature in the link: {e}")
                return tuple(gr.skip() for _ in dash_outputs)

        demo.load(from_url, None, dash_outputs)
    return demo


STEER_COLUMNS = ("layer", "feature", "strength", "method", "label")


def _steer_rows(steers: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        [[s[c] for c in STEER_COLUMNS] for s in steers], columns=list(STEER_COLUMNS)
    )


def steers_from_table(table: Any) -> list[dict[str, Any]]:
    """The steering table (as the UI or an API client sends it) as a list of dicts.

    Rows with an empty layer and feature are skipped (a row the user is still filling in); a
    cell that is not a number raises :class:`UserError` naming the row.
    """
    from explorer.handlers import parse_float, parse_int
    from explorer.steer import MAX_STRENGTH

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


if __name__ == "__main__":  # a Hugging Face Space runs this file (README front matter: app_file)
    import sys

    from explorer.__main__ import main

    sys.exit(main([]))
