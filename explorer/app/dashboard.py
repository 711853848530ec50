"""The Feature tab: one feature's dashboard (header, histogram, logit effects, neighbours, top
examples, interval samples), tested on a text, labelled quickly, or sent to steering; a residual
SAE's feature (``res``) or a transcoder's (``tc``), chosen beside the layer and feature."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from explorer.app import render, sources
from explorer.app.context import Context, UserError, parse_int
from explorer.app.ui import status, status_box, ui
from explorer.encode import EncodeError, feature_activations
from explorer.store import StoreError
from explorer.store.schema import RES, SHORT

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from explorer.store import FeatureRecord


TAB_ID = "dashboard"

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


@dataclass
class DashboardView:
    """A feature's dashboard."""

    layer: int
    feature: int
    header: str
    histogram: go.Figure
    promoted: go.Figure
    suppressed: go.Figure
    neighbours: pd.DataFrame
    top_examples: str
    intervals: str
    test: str = ""
    label: str = ""
    human_label: str = ""
    record: FeatureRecord | None = None
    source: str = RES


def record(ctx: Context, layer: Any, feature: Any, source: Any = RES) -> FeatureRecord:
    """The feature's record in the store (``source``: ``res`` or ``tc``), or
    :class:`UserError` (a store without that source's data says how to rebuild it)."""
    source = ctx.source(source)
    layer_n, feature_n = ctx.check_feature(layer, feature, source)
    reader = ctx.need_reader(source)
    try:
        return reader.feature(layer_n, feature_n)
    except StoreError as e:
        raise UserError(str(e)) from None


def header(ctx: Context, layer: Any, feature: Any, source: Any = RES) -> str:
    """The dashboard's header alone (after a label is saved, only it changes)."""
    rec = record(ctx, layer, feature, source)
    return _badges(ctx, rec)


def explanation_line(ctx: Context, layer: int, feature: int, source: str = RES) -> str:
    """The feature's best explanation as plain text, with its score and source ('' if none).
    Machine output, never a label: the header shows it apart, escaped. Explanations are the
    residual SAEs' features' only: none for another source's."""
    if source != RES:
        return ""
    best = ctx.read_explanations(lambda x: x.best(layer, feature), None)
    return "" if best is None else f"Explanation: {best.describe()}"


def _badges(ctx: Context, rec: FeatureRecord) -> str:
    """The header: a person's label as is, a curated one marked as curated; then the best
    explanation, if any, on a line of its own."""
    source = rec.source
    human = ctx.labels_for(source).current(rec.layer, rec.feature)
    auto = ctx.description(rec.layer, rec.feature, source)
    line = explanation_line(ctx, rec.layer, rec.feature, source)
    extra = f'<div class="gse-explanation gse-muted">{render.esc(line)}</div>' if line else ""
    steer = ctx.steer_estimate(rec.layer, rec.feature, source)
    if human is not None:
        html = render.badges_html(rec, human.label, ctx.dense_threshold, auto=auto, steer=steer)
        return html + extra
    curated = ctx.curated.get((rec.layer, rec.feature)) if source == RES else None
    html = render.badges_html(
        rec, curated, ctx.dense_threshold, curated=curated is not None, auto=auto, steer=steer
    )
    return html + extra


def view(
    ctx: Context,
    layer: Any,
    feature: Any,
    test_text: str = "",
    log_counts: bool = False,
    source: Any = RES,
) -> DashboardView:
    """Everything about one feature; ``test_text`` (optional) is marked on its histogram."""
    rec = record(ctx, layer, feature, source)
    source = rec.source
    labels_db = ctx.labels_for(source)
    label = ctx.label_of(rec.layer, rec.feature, source)
    human = labels_db.current(rec.layer, rec.feature)
    marks: list[float] = []
    test = ""
    if test_text and test_text.strip():
        tokens, acts, truncated = _feature_acts(ctx, rec.layer, rec.feature, test_text, source)
        peak = max(acts, default=0.0)
        marks = [peak] if peak > 0 else []
        test = (
            f'<div class="gse-text">{render.token_spans(tokens, acts, rec.max_act or peak)}'
            f"</div><p>max on your text: {peak:.3f}"
            + (" (text cut at the token limit)" if truncated else "")
            + ("" if peak > 0 else " — the feature does not fire on it")
            + "</p>"
        )
    labels = labels_db.current_all(rec.layer)
    neighbours = pd.DataFrame(
        {
            "feature": rec.neighbours,
            "name": [ctx.name(rec.layer, int(f), source) for f in rec.neighbours],
            "cosine": [round(float(c), 3) for c in rec.neighbour_cos],
            "label": [ctx.shown_label(labels, rec.layer, f, source) for f in rec.neighbours],
        }
    )
    return DashboardView(
        layer=rec.layer,
        feature=rec.feature,
        header=_badges(ctx, rec),
        histogram=render.histogram_figure(rec, marks, log_counts=log_counts),
        promoted=render.logits_figure(rec.top_logits_tokens, rec.top_logits_values, True),
        suppressed=render.logits_figure(rec.bottom_logits_tokens, rec.bottom_logits_values, False),
        neighbours=neighbours,
        top_examples=render.examples_html(rec.top_examples, rec.max_act, "never fired"),
        intervals=render.intervals_html(rec),
        test=test,
        label=label,
        human_label=human.label if human is not None else "",
        record=rec,
        source=source,
    )


def _feature_acts(
    ctx: Context, layer: int, feature: int, text: str, source: str = RES
) -> tuple[list[str], list[float], bool]:
    try:
        return feature_activations(ctx.bundle, text, layer, feature, source)
    except (EncodeError, ValueError) as e:
        raise UserError(str(e)) from None


def random_feature(
    ctx: Context, layer: Any = "all", rng: random.Random | None = None, source: Any = RES
) -> tuple[int, int]:
    """A random live feature (fired at least once) of ``source``, of one layer or any
    (:func:`random_any` picks among every source's)."""
    picked = random_any(ctx, layer, rng, ctx.source(source))
    return picked[0], picked[1]


def random_any(
    ctx: Context, layer: Any = "all", rng: random.Random | None = None, source: Any = "all"
) -> tuple[int, int, str]:
    """A random live feature ``(layer, feature, source)`` of one source (``"all"``: any the
    store holds), of one layer or any."""
    if source in (None, "", "all"):
        df = ctx.browse_summary()
    else:
        df = ctx.summary(ctx.source(source))
    df = df[~df["dead"]]
    if layer not in (None, "", "all"):
        df = df[df["layer"] == parse_int(layer, "layer")]
    if df.empty:
        raise UserError("no live features to choose from")
    i = (rng or random.Random()).randrange(len(df))
    short = str(df["source"].iat[i])
    return int(df["layer"].iat[i]), int(df["feature"].iat[i]), ctx.source(short)


@dataclass
class DashboardTab:
    source: gr.Radio
    layer: gr.Dropdown
    feature: gr.Number
    open_btn: gr.Button
    rand_btn: gr.Button
    to_steer_btn: gr.Button
    add_steer_btn: gr.Button
    header: gr.HTML
    quick_label: gr.Textbox
    quick_name: gr.Textbox
    quick_key: gr.Textbox
    quick_save: gr.Button
    label_status: gr.HTML
    log_counts: gr.Checkbox
    hist: gr.Plot
    promoted: gr.Plot
    suppressed: gr.Plot
    neighbours: gr.Dataframe
    test_text: gr.Textbox
    test_btn: gr.Button
    test_html: gr.HTML
    top_html: gr.HTML
    intervals_html: gr.HTML
    shown: gr.State
    tabs: gr.Tabs

    @property
    def outputs(self) -> list[Any]:
        """What opening a feature updates, in the order of :func:`open_values`'s values."""
        return [
            self.layer,
            self.feature,
            self.header,
            self.quick_label,
            self.hist,
            self.promoted,
            self.suppressed,
            self.neighbours,
            self.top_html,
            self.intervals_html,
            self.test_html,
            self.shown,
            self.label_status,
            self.source,
            self.tabs,
        ]


def open_values(
    ctx: Context,
    layer: Any,
    feature: Any,
    test: str = "",
    log_counts: bool = False,
    source: Any = RES,
) -> tuple[Any, ...]:
    """A feature's dashboard as the values of :attr:`DashboardTab.outputs` (its tab selected).

    ``shown``, ``(layer, feature, source)``, is the session's record of what the dashboard
    shows: a label is saved for it (never for the inputs, which the user may have changed
    since). The label box holds a person's label only: a curated one is shown, marked, in the
    header, and is not copied as the user's own on Save.
    """
    v = view(ctx, layer, feature, test, log_counts, source)
    return (
        sources.layers_update(ctx, v.source, v.layer),
        v.feature,
        v.header,
        v.human_label,
        v.histogram,
        v.promoted,
        v.suppressed,
        v.neighbours,
        v.top_examples,
        v.intervals,
        v.test,
        (v.layer, v.feature, v.source),
        "",
        SHORT[v.source],
        gr.Tabs(selected=TAB_ID),
    )


def layout(ctx: Context, tabs: gr.Tabs) -> DashboardTab:
    """The tab's components and its own events; opening a feature selects this tab in ``tabs``."""
    layer_names = [str(n) for n in ctx.layers]
    with gr.Row():
        d_source = sources.radio(ctx, "d-source")
        d_layer = gr.Dropdown(layer_names, value=layer_names[-1], label="Layer", elem_id="d-layer")
        d_feature = gr.Number(0, label="Feature", precision=0, minimum=0, elem_id="d-feature")
        open_btn = gr.Button("Open", variant="primary", elem_id="open-feature")
        rand_btn = gr.Button("Random feature")
        to_steer_btn = gr.Button("Steer with this feature", elem_id="to-steer")
        add_steer_btn = gr.Button("Add it to the steering table", elem_id="to-steer-add")
    header_html = gr.HTML(elem_id="dash-header")
    with gr.Row():
        quick_label = gr.Textbox(
            label="Label", scale=4, elem_id="quick-label", placeholder="what this feature means"
        )
        quick_name = gr.Textbox(label="Your name (optional)", scale=2)
        quick_key = gr.Textbox(
            label="Owner's key", type="password", scale=2, visible=bool(ctx.policy.key)
        )
        quick_save = gr.Button("Save label", scale=1, elem_id="quick-save")
    label_status = status_box("label-status")
    shown = gr.State(None)
    gr.Markdown(HIST_NOTE)
    log_counts = gr.Checkbox(False, label="log scale (counts)", elem_id="hist-log")
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
    sources.follow(ctx, d_source, d_layer)
    tab = DashboardTab(
        source=d_source,
        layer=d_layer,
        feature=d_feature,
        open_btn=open_btn,
        rand_btn=rand_btn,
        to_steer_btn=to_steer_btn,
        add_steer_btn=add_steer_btn,
        header=header_html,
        quick_label=quick_label,
        quick_name=quick_name,
        quick_key=quick_key,
        quick_save=quick_save,
        label_status=label_status,
        log_counts=log_counts,
        hist=hist,
        promoted=promoted,
        suppressed=suppressed,
        neighbours=neighbours,
        test_text=test_text,
        test_btn=test_btn,
        test_html=test_html,
        top_html=top_html,
        intervals_html=intervals_html,
        shown=shown,
        tabs=tabs,
    )
    outputs = tab.outputs

    def open_feature(
        layer: Any, feature: Any, test: str = "", log_scale: bool = False, source: Any = RES
    ) -> tuple[Any, ...]:
        return open_values(ctx, layer, feature, test, bool(log_scale), source)

    def open_neighbour(shown: Any, log_scale: bool, evt: gr.SelectData) -> tuple[Any, ...]:
        if not shown:
            raise UserError("open a feature first")
        layer, _, source = shown_feature(shown)
        return open_values(ctx, layer, evt.row_value[0], "", bool(log_scale), source)

    neighbours.select(ui(open_neighbour), [shown, log_counts], outputs)
    open_btn.click(
        ui(open_feature), [d_layer, d_feature, gr.State(""), log_counts, d_source], outputs,
        api_name="open_feature",
    )  # fmt: skip
    test_btn.click(
        ui(open_feature), [d_layer, d_feature, test_text, log_counts, d_source], outputs,
        api_name="test_feature",
    )  # fmt: skip

    def random_open(layer: Any, log_scale: bool) -> tuple[Any, ...]:
        layer_n, feature_n, source = random_any(ctx, "all")
        return open_values(ctx, layer_n, feature_n, "", bool(log_scale), source)

    rand_btn.click(ui(random_open), [d_layer, log_counts], outputs)

    def redraw_histogram(shown: Any, test: str, log_scale: bool) -> Any:
        if not shown:
            return gr.skip()
        layer, feature, source = shown_feature(shown)
        return view(ctx, layer, feature, test, bool(log_scale), source).histogram

    log_counts.change(ui(redraw_histogram), [shown, test_text, log_counts], hist)

    def save_label(
        shown: Any, label: str, labeller: str, key: str, profile: gr.OAuthProfile | None
    ) -> tuple[str, str]:
        """Save a label for the feature whose dashboard is shown (not the inputs' feature)."""
        if not shown:
            raise UserError("open a feature first: the label is saved for the feature shown")
        layer, feature, source = shown_feature(shown)
        message = ctx.save_label(
            layer, feature, label, "", "medium", labeller, profile, key, source
        )
        return status(message), header(ctx, layer, feature, source)

    quick_save.click(
        ui(save_label),
        [shown, quick_label, quick_name, quick_key],
        [label_status, header_html],
        api_name="save_label",
    )
    return tab


def shown_feature(shown: Any) -> tuple[int, int, str]:
    """A tab's record of the feature on screen as ``(layer, feature, source)`` (a record of
    ``(layer, feature)`` is a residual SAE's feature)."""
    layer, feature, *rest = shown
    return int(layer), int(feature), str(rest[0]) if rest else RES
