"""The Label tab: a queue of unlabelled features by density band, the label form and a feature's
label history, and import / export of the label database.

Labels are per source: the queue and the form take a source (``res``, ``tc``) beside the layer,
and a transcoder feature's labels live in their own scope of the same file
(:meth:`explorer.app.context.Context.labels_for`). Export, import and retraction work on the
residual SAEs' labels (``python -m explorer.labels --scope <scope>/transcoder`` reaches the
others)."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from explorer.app import dashboard, sources
from explorer.app.context import Context, UserError, parse_int
from explorer.app.ui import status, status_box, ui
from explorer.labels import LabelError
from explorer.store.schema import RES, SHORT

TAB_ID = "label"
HISTORY_COLUMNS = ["id", "when", "label", "notes", "confidence", "by", "retracted"]

# Clicks the export's download link once the new one is on the page (each export is a new file,
# so its address differs from the last one clicked; give up after 10 s).
DOWNLOAD_JS = """() => {
  const go = (tries) => {
    const a = document.querySelector('#export-file a[download]');
    if (a && a.href !== window.gseLastExport) { window.gseLastExport = a.href; a.click(); }
    else if (tries > 0) { setTimeout(() => go(tries - 1), 100); }
  };
  go(100);
  return [];
}"""
BAND_EDGES = (1e-4, 1e-3)  # rare | sparse | common, below the store's dense threshold


def density_bands(dense_threshold: float) -> dict[str, tuple[float, float]]:
    """The labelling queue's density bands, ``{name: (lo, hi]}``: decades below the store's
    dense threshold, then "dense" above it, so that the dense band holds exactly the features the
    store flags dense. At the default 1%: ``rare (≤ 0.01%)``, ``sparse (0.01–0.1%)``,
    ``common (0.1–1%)``, ``dense (> 1%)``; an edge at or above the threshold is dropped."""
    edges = [0.0, *(e for e in BAND_EDGES if e < dense_threshold), dense_threshold]
    names = ("rare", "sparse", "common")
    bands = {}
    for name, lo, hi in zip(names, edges, edges[1:], strict=False):
        span = f"≤ {100 * hi:g}%" if lo == 0.0 else f"{100 * lo:g}–{100 * hi:g}%"
        bands[f"{name} ({span})"] = (lo, hi)
    bands[f"dense (> {100 * dense_threshold:g}%)"] = (dense_threshold, 1.0)
    return bands


def next_unlabelled(
    ctx: Context,
    layer: Any = "all",
    band: str = "any",
    rng: random.Random | None = None,
    source: Any = RES,
) -> tuple[int, int]:
    """A random live, unlabelled feature of ``source`` in a density band (the labelling
    queue)."""
    source = ctx.source(source)
    df = ctx.summary(source)
    df = df[~df["dead"]]
    if layer not in (None, "", "all"):
        df = df[df["layer"] == parse_int(layer, "layer")]
    bands = density_bands(ctx.dense_threshold)
    lo, hi = bands.get(band, (None, None)) if band != "any" else (0.0, 1.0)
    if lo is None or hi is None:
        raise UserError(f"unknown density band {band!r}")
    df = df[(df["density"] > lo) & (df["density"] <= hi)]
    done = set(ctx.labels_for(source).current_all())
    todo = [
        (int(a), int(b))
        for a, b in zip(df["layer"], df["feature"], strict=True)
        if (int(a), int(b)) not in done
    ]
    if not todo:
        raise UserError("every feature in this selection is labelled")
    return (rng or random.Random()).choice(todo)


def label_history(ctx: Context, layer: Any, feature: Any, source: Any = RES) -> pd.DataFrame:
    """Every label the feature was given, newest first."""
    source = ctx.source(source)
    layer_n, feature_n = ctx.check_feature(layer, feature, source)
    rows = [
        {
            "id": h.id,
            "when": h.created_at,
            "label": h.label,
            "notes": h.notes,
            "confidence": h.confidence,
            "by": h.labeller,
            "retracted": h.retracted_at or "",
        }
        for h in ctx.labels_for(source).history(layer_n, feature_n)
    ]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def export_labels(ctx: Context, fmt: str) -> str:
    """The label database as a ``labels.csv`` or ``labels.json`` in a new temporary folder."""
    body = ctx.labels.export_csv() if fmt == "csv" else ctx.labels.export_json()
    out = Path(tempfile.mkdtemp(prefix="gse-labels-")) / f"labels.{fmt}"
    out.write_text(body, encoding="utf-8")
    return str(out)


def import_labels(ctx: Context, path: Any, profile: Any = None, key: Any = "") -> str:
    """Labels from a CSV or JSON file (the owner's, on a public app); the report to show."""
    ctx.policy.check_owner(profile, key)
    if not path:
        raise UserError("choose a CSV or JSON file to import first")
    try:
        report = ctx.labels.import_file(Path(str(path)))
    except LabelError as e:
        raise UserError(str(e)) from None
    lines = [f"Imported {report.added} labels; {report.duplicates} duplicates skipped."]
    if report.batch and report.added:
        lines[0] += f" Import batch: {report.batch} (retract it below if it was a mistake)."
    lines += [f"- {err}" for err in report.errors]
    return "\n".join(lines)


def show_values(ctx: Context, layer: Any, feature: Any, source: Any = RES) -> tuple[Any, ...]:
    """A feature in the label form: the values of :attr:`LabellingTab.outputs` (the first is what
    is shown, ``(layer, feature, source)``, the state a label is saved for)."""
    v = dashboard.view(ctx, layer, feature, source=source)
    return (
        (v.layer, v.feature, v.source),
        sources.layers_update(ctx, v.source, v.layer),
        v.feature,
        v.header,
        v.top_examples,
        label_history(ctx, v.layer, v.feature, v.source),
        SHORT[v.source],
    )


def first_values(ctx: Context, rng: random.Random | None = None) -> tuple[Any, ...]:
    """What the tab opens on: a feature of the queue (any layer, any density; ``res``)."""
    return show_values(ctx, *next_unlabelled(ctx, "all", "any", rng or random.Random()))


def retract(ctx: Context, what: str, ident: Any, profile: Any = None, key: Any = "") -> str:
    """Retract one label (``what == "label"``, ``ident`` its id) or an import batch (``"batch"``):
    the owner's; appended to the history, which keeps everything. The message to show."""
    ctx.policy.check_owner(profile, key)
    by = ctx.policy.labeller("", profile, key) if ctx.policy.public else "owner"
    try:
        if what == "label":
            row = ctx.labels.retract(parse_int(ident, "label id", 1), by=by)
            return f"Retracted label #{row.id} of layer {row.layer} feature {row.feature}."
        if what == "batch":
            count = ctx.labels.retract_batch(str(ident or "").strip(), by=by)
            return f"Retracted {count} labels of import {str(ident).strip()}."
    except LabelError as e:
        raise UserError(str(e)) from None
    raise UserError(f"cannot retract {what!r}")


@dataclass
class LabellingTab:
    q_source: gr.Radio
    source: gr.Radio
    q_layer: gr.Dropdown
    q_band: gr.Dropdown
    q_next: gr.Button
    layer: gr.Dropdown
    feature: gr.Number
    header: gr.HTML
    examples: gr.HTML
    label: gr.Textbox
    notes: gr.Textbox
    conf: gr.Radio
    name: gr.Textbox
    save: gr.Button
    status: gr.HTML
    history: gr.Dataframe
    saved: gr.Dataframe
    key: gr.Textbox
    shown: gr.State
    exp_csv: gr.Button
    exp_json: gr.Button
    exp_file: gr.File
    imp_file: gr.File
    imp_btn: gr.Button
    imp_status: gr.HTML

    @property
    def outputs(self) -> list[Any]:
        """What showing a feature updates, in the order of :func:`show_values`."""
        return [
            self.shown, self.layer, self.feature, self.header, self.examples, self.history,
            self.source,
        ]  # fmt: skip


def layout(ctx: Context) -> LabellingTab:
    """The tab's components and its own events (queue, save, import, export)."""
    layer_names = [str(n) for n in ctx.layers]
    with gr.Row():
        q_source = sources.radio(ctx, "q-source", "Queue's source")
        q_layer = gr.Dropdown(["all", *layer_names], value="all", label="Layer")
        q_band = gr.Dropdown(
            ["any", *density_bands(ctx.dense_threshold)], value="any", label="Density"
        )
        q_next = gr.Button("Next unlabelled feature", elem_id="next-unlabelled")
    with gr.Row():
        l_source = sources.radio(ctx, "l-source")
        l_layer = gr.Dropdown(layer_names, value=layer_names[-1], label="Layer", elem_id="l-layer")
        l_feature = gr.Number(0, label="Feature", precision=0, minimum=0, elem_id="l-feature")
        l_open = gr.Button("Open", elem_id="l-open")
    l_shown = gr.State(None)
    l_header = gr.HTML(elem_id="l-header")
    l_examples = gr.HTML()
    l_label = gr.Textbox(label="Label", elem_id="l-label")
    l_notes = gr.Textbox(label="Notes", lines=2)
    with gr.Row():
        l_conf = gr.Radio(["low", "medium", "high"], value="medium", label="Confidence")
        l_name = gr.Textbox(label="Labeller")
        l_key = gr.Textbox(label="Owner's key", type="password", visible=bool(ctx.policy.key))
    gr.Markdown(ctx.policy.describe())
    l_save = gr.Button("Save and next", variant="primary", elem_id="l-save")
    l_status = status_box("l-status")
    l_saved = gr.Dataframe(
        pd.DataFrame(columns=HISTORY_COLUMNS),
        label="Just saved: the history of the feature you labelled",
        interactive=False,
        elem_id="l-saved",
    )
    l_history = gr.Dataframe(
        pd.DataFrame(columns=HISTORY_COLUMNS),
        label="History of this feature's labels",
        interactive=False,
        elem_id="l-history",
    )
    with gr.Row():
        exp_csv = gr.Button("Export CSV", elem_id="export-csv")
        exp_json = gr.Button("Export JSON", elem_id="export-json")
        exp_file = gr.File(label="Last export", interactive=False, elem_id="export-file")
    with gr.Row():
        imp_file = gr.File(label="Import labels (CSV or JSON)", file_types=[".csv", ".json"])
        imp_btn = gr.Button("Import")
    imp_status = status_box("imp-status")
    with gr.Row():
        # A text box: an empty Number shows 0, which its minimum of 1 marks as an error on open.
        r_label = gr.Textbox(
            label="Retract label # (the owner's)", placeholder="a label's id, e.g. 12",
            elem_id="retract-id",
        )  # fmt: skip
        r_label_btn = gr.Button("Retract label", elem_id="retract-label")
        r_batch = gr.Textbox(label="Retract an import batch (its id)")
        r_batch_btn = gr.Button("Retract import", elem_id="retract-batch")
    r_status = status_box("retract-status")

    label_outputs = [l_shown, l_layer, l_feature, l_header, l_examples, l_history, l_source]
    sources.follow(ctx, l_source, l_layer)

    def queue_layers(source: Any) -> Any:
        return gr.Dropdown(choices=["all", *sources.layer_names(ctx, source)], value="all")

    q_source.input(queue_layers, q_source, q_layer, api_visibility="private")

    def show_for_label(layer: Any, feature: Any, source: Any = RES) -> tuple[Any, ...]:
        return show_values(ctx, layer, feature, source)

    def show_next(layer: Any, band: str, source: Any = RES) -> tuple[Any, ...]:
        source = ctx.source(source)
        return show_for_label(*next_unlabelled(ctx, layer, band, random.Random(), source), source)

    q_next.click(
        ui(show_next), [q_layer, q_band, q_source], label_outputs, api_name="next_unlabelled"
    )
    l_feature.submit(ui(show_for_label), [l_layer, l_feature, l_source], label_outputs)
    l_open.click(ui(show_for_label), [l_layer, l_feature, l_source], label_outputs)

    def save_and_next(
        shown: Any,
        label: str,
        notes: str,
        confidence: str,
        labeller: str,
        key: str,
        queue_layer: Any,
        band: str,
        queue_source: Any,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:
        """Save the label for the feature shown (whatever the inputs say now), then show the
        next one of the queue; the saved entry stays visible in "Just saved"."""
        if not shown:
            raise UserError("open a feature first: the label is saved for the feature shown")
        layer, feature, source = dashboard.shown_feature(shown)
        message = ctx.save_label(
            layer, feature, label, notes, confidence, labeller, profile, key, source
        )
        saved = label_history(ctx, layer, feature, source)
        try:
            following = show_next(queue_layer, band, queue_source)
        except UserError as e:
            following = show_for_label(layer, feature, source)
            message += f" · {e}"
        return (*following, status(message), saved, "", "")

    l_save.click(
        ui(save_and_next),
        [l_shown, l_label, l_notes, l_conf, l_name, l_key, q_layer, q_band, q_source],
        [*label_outputs, l_status, l_saved, l_label, l_notes],
        api_name="save_and_next",
    )

    def export_csv() -> str:
        return export_labels(ctx, "csv")

    def export_json() -> str:
        return export_labels(ctx, "json")

    # One click downloads: the file is written, then its link is clicked as a user would.
    for button, fn in ((exp_csv, export_csv), (exp_json, export_json)):
        button.click(ui(fn), None, exp_file).then(None, None, None, js=DOWNLOAD_JS)

    def import_from(path: Any, key: str, profile: gr.OAuthProfile | None) -> str:
        return status(import_labels(ctx, path, profile, key))

    imp_btn.click(ui(import_from), [imp_file, l_key], imp_status, api_name="import_labels")

    def retract_label(label_id: Any, key: str, profile: gr.OAuthProfile | None) -> str:
        return status(retract(ctx, "label", label_id, profile, key))

    def retract_import(batch: Any, key: str, profile: gr.OAuthProfile | None) -> str:
        return status(retract(ctx, "batch", batch, profile, key))

    r_label_btn.click(ui(retract_label), [r_label, l_key], r_status, api_name="retract_label")
    r_batch_btn.click(ui(retract_import), [r_batch, l_key], r_status, api_name="retract_import")
    return LabellingTab(
        q_source=q_source,
        source=l_source,
        q_layer=q_layer,
        q_band=q_band,
        q_next=q_next,
        layer=l_layer,
        feature=l_feature,
        header=l_header,
        examples=l_examples,
        label=l_label,
        notes=l_notes,
        conf=l_conf,
        name=l_name,
        save=l_save,
        status=l_status,
        history=l_history,
        saved=l_saved,
        key=l_key,
        shown=l_shown,
        exp_csv=exp_csv,
        exp_json=exp_json,
        exp_file=exp_file,
        imp_file=imp_file,
        imp_btn=imp_btn,
        imp_status=imp_status,
    )
