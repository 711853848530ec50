"""The Circuits tab's handlers: open an attribution graph, read its nodes, pin them, intervene.

A graph explains the model's next token after a prompt (:mod:`explorer.circuits`). The tab works
on the graph *file* (:func:`explorer.circuits.to_json`, pruned), whether it was shipped
precomputed (the curated graphs, :mod:`explorer.circuits.library`) or computed here, so what is
drawn is exactly what "Download the JSON" gives. :class:`Circuit` is one opened graph with what
the tab reads off it: each node's kind, label and *effect on the target* (the all-paths effect
through the file's edges, a feature's change re-scaling its output by change / activation: the
graph's prediction of what scaling the node does to the target's logit).

Pure: plain functions of their inputs and the :class:`Context`, no Gradio (the layout is
:mod:`explorer.app.circuits_tab`, the drawing :mod:`explorer.app.circuit_view`).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.app.context import Context, UserError, parse_float
from explorer.bundle import BundleError
from explorer.circuits.cli import GraphInputError, GraphRequest, graph_data, prompt_ids, target_id
from explorer.circuits.files import FEATURE_TYPES, GraphFile, GraphFileError, from_json
from explorer.circuits.library import EDGE_THRESHOLD, NODE_THRESHOLD
from explorer.store.schema import TRANSCODER

if TYPE_CHECKING:
    from explorer.circuits.intervene import Intervention

TAB_ID = "circuits"
MAX_TOKENS = 32
"""The longest prompt the tab attributes (BOS included): a graph of 32 tokens takes minutes on a
CPU (``docs/circuits.md``'s costs); the command line takes up to 64."""
MAX_SCALE = 10.0
TOP_K = 10
KINDS = {v: k for k, v in FEATURE_TYPES.items()}  # the file's feature_type -> our node kind
_PIN = re.compile(r"(E|[0-9]{1,3})_-?[0-9]{1,9}_[0-9]{1,4}")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class NodeInfo:
    """One node of the file, decoded: ``feature`` is the transcoder feature (features), the
    vocabulary id (tokens, logits) or -1 (errors); ``layer`` is -1 for tokens and the model's
    layer count for logits; ``influence`` is the file's cumulative influence (small: important;
    ``None`` for logits)."""

    node_id: str
    kind: str
    layer: int
    pos: int
    feature: int
    activation: float | None
    influence: float | None
    label: str
    effect: float = 0.0

    @property
    def name(self) -> str:
        """``L9 tc #456``, ``L9 error``, ``embedding``, ``output``: the node's short name."""
        if self.kind == "feature":
            return f"L{self.layer} tc #{self.feature}"
        if self.kind == "error":
            return f"L{self.layer} error"
        return "embedding" if self.kind == "token" else "output"


@dataclass
class Circuit:
    """An opened graph: the prompt and target asked for, the prompt's token ids, the file (as
    written and as read), the model's top next tokens, and the decoded nodes."""

    prompt: str
    target: str
    ids: list[int]
    data: dict[str, Any]
    top: list[tuple[int, str, float]]
    curated: bool = False
    caption: str = ""
    saved: Path | None = field(default=None, init=False, repr=False)
    file: GraphFile = field(init=False)
    nodes: dict[str, NodeInfo] = field(init=False)
    target_id: int = field(init=False)
    target_token: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            self.file = from_json(self.data)
        except GraphFileError as e:
            raise UserError(f"the graph file cannot be read: {e}") from None
        tokens = self.file.metadata["prompt_tokens"]
        if len(tokens) != len(self.ids):
            raise UserError("the graph file's tokens are not this prompt's (a stale file?)")
        nodes = [decode_node(n, tokens) for n in self.file.nodes]
        logits = [n for n in nodes if n.kind == "logit"]
        if len(logits) != 1:
            raise UserError(f"a graph here explains one token; this one has {len(logits)}")
        self.target_id = logits[0].feature
        # The token's text: from the top tokens when it is one, else from the file's label.
        self.target_token = next(
            (t for i, t, _ in self.top if i == self.target_id), _logit_text(logits[0].label)
        )
        effects = effects_on(self.file, logits[0].node_id)
        self.nodes = {n.node_id: replace(n, effect=effects.get(n.node_id, 0.0)) for n in nodes}

    @property
    def slug(self) -> str:
        return str(self.file.metadata["slug"])

    @property
    def top_feature(self) -> NodeInfo | None:
        """The most influential feature node (the smallest cumulative influence)."""
        found = [n for n in self.nodes.values() if n.kind == "feature" and n.influence is not None]
        return min(found, key=lambda n: n.influence or 0.0) if found else None

    def shown(self, threshold: float) -> list[NodeInfo]:
        """The nodes drawn at node threshold ``threshold``: features and errors up to that
        cumulative influence, every token and the target."""

        def kept(n: NodeInfo) -> bool:
            if n.kind in ("token", "logit"):
                return True
            return n.influence is not None and n.influence <= threshold

        return [n for n in self.nodes.values() if kept(n)]


def _logit_text(clerp: str) -> str:
    """The token of a logit node's label (``Output " Paris" (p=0.420)``; shown as the viewer
    shows it)."""
    found = re.fullmatch(r'Output "(.*)" \(p=[0-9.]+\)', clerp, flags=re.S)
    return found[1] if found else clerp


def decode_node(node: dict[str, Any], tokens: Sequence[str]) -> NodeInfo:
    """A file's node as a :class:`NodeInfo` (the ids are circuit-tracer's: ``layer_feature_pos``
    for features, ``layer_-1_pos`` errors, ``E_token_pos`` embeddings, ``n+1_token_pos``
    logits)."""
    kind = KINDS.get(node["feature_type"], "feature")
    head, feature, pos = node["node_id"].rsplit("_", 2)
    layer = -1 if head == "E" else int(head)
    if kind == "logit":
        layer -= 1
    activation = node.get("activation")
    if kind == "feature":
        label = str(node.get("clerp") or "")
    elif kind == "token":
        label = tokens[int(pos)] if int(pos) < len(tokens) else ""
    elif kind == "logit":
        label = str(node.get("clerp") or "")
    else:
        label = ""
    return NodeInfo(
        node_id=node["node_id"],
        kind=kind,
        layer=layer,
        pos=int(pos),
        feature=int(feature),
        activation=None if activation is None else float(activation),
        influence=None if node.get("influence") is None else float(node["influence"]),
        label=label,
    )


def effects_on(file: GraphFile, target: str) -> dict[str, float]:
    """Each node's total effect on ``target`` through the file's edges: the direct edge plus
    every path, a feature's change in pre-activation re-scaling its output by ``change /
    activation`` (as in the replacement model, where a JumpReLU passes its input on). The
    effect of scaling a node by ``s`` on the target's logit is ``(s - 1) * effect``."""
    import numpy as np

    index = {n["node_id"]: i for i, n in enumerate(file.nodes)}
    n = len(index)
    a = np.zeros((n, n))
    for link in file.links:
        a[index[link["target"]], index[link["source"]]] += float(link["weight"])
    gain = np.zeros(n)
    for i, node in enumerate(file.nodes):
        act = node.get("activation")
        if KINDS.get(node["feature_type"]) == "feature" and act:
            gain[i] = 1.0 / float(act)
    frontier = a[index[target]].copy()
    total = frontier.copy()
    for _ in range(n + 1):  # the graph has no cycles: a path has at most n edges
        frontier = (frontier * gain) @ a
        if not frontier.any():
            break
        total += frontier
    return {node["node_id"]: float(total[i]) for i, node in enumerate(file.nodes)}


# --- opening a graph ----------------------------------------------------------------------------


def missing(ctx: Context) -> str | None:
    """Why this bundle cannot draw graphs (one line), or ``None`` when it can: a graph needs a
    transcoder on every layer."""
    spec = ctx.bundle.spec
    n_layers = int(ctx.bundle.model.cfg.n_layers)
    have = set(spec.transcoder_layers)
    if not have:
        hint = (
            " (they come with `python -m precompute train-transcoders --recipe default`)"
            if spec.name == "default"
            else ""
        )
        return f"Circuits needs a transcoder on every layer; bundle {spec.name!r} has none{hint}."
    lacking = [n for n in range(n_layers) if n not in have]
    if lacking:
        return (
            f"Circuits needs a transcoder on every layer; bundle {spec.name!r} has none on "
            f"layers {', '.join(map(str, lacking))}."
        )
    return None


def check_available(ctx: Context) -> None:
    why = missing(ctx)
    if why is not None:
        raise UserError(why)


def request(prompt: Any, target: Any) -> GraphRequest:
    """The graph asked for: one token (the top prediction when ``target`` is blank)."""
    text = prompt if isinstance(prompt, str) else ""
    wanted = target if isinstance(target, str) and target != "" else None
    return GraphRequest(
        prompt=text,
        target=wanted,
        max_tokens=MAX_TOKENS,
        max_n_logits=1,
        node_threshold=NODE_THRESHOLD,
        edge_threshold=EDGE_THRESHOLD,
    )


def token_ids(ctx: Context, prompt: Any) -> list[int]:
    """The prompt's ids, BOS first; an empty or too long prompt is a :class:`UserError`."""
    try:
        return prompt_ids(ctx.bundle, request(prompt, None))
    except GraphInputError as e:
        raise UserError(str(e).replace(" (--max-tokens)", "")) from None


def top_tokens(ctx: Context, ids: Sequence[int], k: int = TOP_K) -> list[tuple[int, str, float]]:
    """The model's ``k`` most probable next tokens after ``ids``: ``(id, text, p)``."""
    import torch

    model = ctx.bundle.model
    with torch.inference_mode():
        logits = model(torch.tensor([list(ids)], device=model.cfg.device))[0, -1]
    p, i = torch.softmax(logits.float(), dim=-1).topk(k)
    decode = ctx.bundle.tokenizer.decode
    return [(int(t), str(decode([int(t)])), float(q)) for t, q in zip(i, p, strict=True)]


def target_text(target: Any) -> str:
    """The target as the tab keeps it: the text typed or picked, ``""`` for the top one."""
    return target if isinstance(target, str) else ""


def check_target(ctx: Context, target: str) -> None:
    """Refuse a target that is not exactly one token of the vocabulary (one the tokenizer only
    knows as its unknown token included), before anything is computed."""
    if not target:
        return
    try:
        found = target_id(ctx.bundle, target)
    except GraphInputError as e:
        raise UserError(str(e)) from None
    tokenizer = ctx.bundle.tokenizer
    unk = getattr(tokenizer, "unk_token_id", None)
    if found is not None and found == unk and target != tokenizer.unk_token:
        raise UserError(f"the target {target!r} is not in the model's vocabulary")


def open_graph(ctx: Context, prompt: Any, target: Any, progress: Progress | None = None) -> Circuit:
    """The graph of ``(prompt, target)``: a curated file, a cached graph, or computed now
    (``progress(done, total)`` while it is). Bad input is a :class:`UserError`."""
    check_available(ctx)
    ids = token_ids(ctx, prompt)
    text = target_text(target)
    check_target(ctx, text)
    key = (str(prompt), text)
    cached: Circuit | None = ctx.graphs.get(key)
    if cached is not None:
        return cached
    curated = ctx.graphs.find(ctx.bundle.spec.name, str(prompt), text)
    if curated is not None:
        data = json.loads(ctx.graphs.path(curated).read_text(encoding="utf-8"))
        circuit = Circuit(str(prompt), text, ids, data, top_tokens(ctx, ids), True, curated.caption)
    else:
        circuit = compute(ctx, str(prompt), text, ids, progress)
    ctx.graphs.put(key, circuit)
    return circuit


def graph_file(ctx: Context, req: GraphRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Attribute ``req`` on the bundle, prune and return the graph file (:func:`graph_data`)."""
    try:
        return graph_data(ctx.bundle, req, progress=progress)
    except (GraphInputError, BundleError) as e:
        raise UserError(str(e)) from None


def compute(
    ctx: Context, prompt: str, target: str, ids: list[int], progress: Progress | None = None
) -> Circuit:
    data = graph_file(ctx, request(prompt, target), progress)
    return Circuit(prompt, target, ids, data, top_tokens(ctx, ids))


def curated_rows(ctx: Context) -> list[list[str]]:
    """The curated graphs of this bundle as rows: prompt, target, caption."""
    return [
        [g.prompt, g.target or "(top prediction)", g.caption]
        for g in ctx.graphs.curated(ctx.bundle.spec.name)
    ]


def curated_entry(ctx: Context, index: Any) -> tuple[str, str]:
    """``(prompt, target)`` of the curated graph in row ``index``."""
    graphs = ctx.graphs.curated(ctx.bundle.spec.name)
    if not isinstance(index, int) or not 0 <= index < len(graphs):
        raise UserError("pick one of the curated graphs")
    return graphs[index].prompt, graphs[index].target or ""


# --- reading a graph ----------------------------------------------------------------------------


def check_threshold(value: Any) -> float:
    return parse_float(value, "node threshold", 0.01, 1.0)


def node(circuit: Circuit, node_id: Any) -> NodeInfo:
    found = circuit.nodes.get(str(node_id))
    if found is None:
        raise UserError(f"the graph has no node {str(node_id)[:40]!r}")
    return found


def dashboard_query(info: NodeInfo) -> str | None:
    """A feature node's dashboard link (transcoder features are the Feature tab's ``tc``
    source), ``None`` for the other kinds, which have none."""
    from urllib.parse import urlencode

    if info.kind != "feature":
        return None
    query = {"tab": "dashboard", "source": "tc", "layer": info.layer, "feature": info.feature}
    return "?" + urlencode(query)


def feature_text(ctx: Context, info: NodeInfo) -> str:
    """What is known of a feature node in words: a person's label of the transcoder feature,
    else the store's automatic description of it, else its label in the graph file."""
    if info.kind != "feature":
        return info.label
    try:
        label = ctx.label_of(info.layer, info.feature, TRANSCODER)
        auto = ctx.description(info.layer, info.feature, TRANSCODER)
    except ValueError:  # a UserError, a StoreError, a LabelError: the file's label stands
        return info.label
    return label or auto or info.label


def feature_density(ctx: Context, info: NodeInfo | None) -> tuple[float, float] | None:
    """A feature node's density over the store's corpus and the store's dense threshold, or
    ``None`` (not a feature node, or no store data for its transcoder layer)."""
    if info is None or info.kind != "feature":
        return None
    dens = ctx.densities(TRANSCODER).get(info.layer)
    if dens is None or not 0 <= info.feature < len(dens):
        return None
    return float(dens[info.feature]), ctx.dense_threshold


def dense_nodes(ctx: Context, circuit: Circuit) -> set[str]:
    """The ids of the graph's feature nodes whose feature the store finds dense (density above
    its dense threshold): drawn apart, since such always-on features top many graphs."""
    out = set()
    for n in circuit.nodes.values():
        found = feature_density(ctx, n)
        if found is not None and found[0] > found[1]:
            out.add(n.node_id)
    return out


def parse_pins(circuit: Circuit | None, value: Any) -> tuple[list[str], list[str]]:
    """``(pins, problems)`` from a comma-separated list of node ids (a link's ``pins``): ids the
    graph lacks are named in ``problems`` and left out (without a graph, only the form is
    checked)."""
    pins: list[str] = []
    problems: list[str] = []
    items = value if isinstance(value, list) else str(value or "").split(",")
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if not _PIN.fullmatch(item) or (circuit is not None and item not in circuit.nodes):
            problems.append(f"pin {item[:40]!r} is not a node of this graph")
        elif item not in pins:
            pins.append(item)
    return pins, problems


def toggle_pin(circuit: Circuit, pins: Sequence[str], node_id: Any) -> list[str]:
    """``pins`` with ``node_id`` added, or removed when it is there."""
    info = node(circuit, node_id)
    kept = [p for p in pins if p in circuit.nodes]
    return [p for p in kept if p != info.node_id] if info.node_id in kept else [*kept, info.node_id]


# --- interventions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """An intervention's result: the nodes scaled, the scale, the model's answer, and the
    graph's prediction for the target's logit (``(scale - 1) * sum of their effects``)."""

    nodes: list[NodeInfo]
    scale: float
    result: Intervention
    predicted: float
    left_out: list[str]


def steer_features(circuit: Circuit | None, pins: Sequence[str]) -> list[tuple[int, int]]:
    """The pinned feature nodes' distinct ``(layer, feature)``, in pin order: what "Steer with
    these" puts in the Steering tab (a feature pinned at several positions steers once, at
    every position, as steering does)."""
    if circuit is None:
        raise UserError("draw a graph and pin features first")
    found: list[tuple[int, int]] = []
    for node in (circuit.nodes[p] for p in pins if p in circuit.nodes):
        if node.kind == "feature" and (node.layer, node.feature) not in found:
            found.append((node.layer, node.feature))
    if not found:
        raise UserError(
            "pin one or more feature nodes first (click a node, then Pin): steering adds "
            "transcoder features' decoder directions"
        )
    return found


def intervention(ctx: Context, circuit: Circuit, pins: Sequence[str], scale: Any) -> Outcome:
    """Scale the pinned feature nodes by ``scale`` (0 ablates) and run the model, attention
    frozen and not; pins of other kinds are left out and named."""
    from explorer.circuits import intervene

    check_available(ctx)
    factor = parse_float(scale, "scale", 0.0, MAX_SCALE)
    chosen = [circuit.nodes[p] for p in pins if p in circuit.nodes]
    features = [n for n in chosen if n.kind == "feature"]
    left_out = [n.name for n in chosen if n.kind != "feature"]
    if not features:
        raise UserError(
            "pin one or more feature nodes first (click a node, then Pin): an intervention "
            "scales transcoder features"
        )
    n_layers = int(ctx.bundle.model.cfg.n_layers)
    tcs = [ctx.bundle.transcoder(n) for n in range(n_layers)]
    result = intervene(
        ctx.bundle.model,
        tcs,
        circuit.ids,
        [(n.layer, n.pos, n.feature) for n in features],
        factor,
        top_k=TOP_K,
        watch=[circuit.target_id],
    )
    predicted = (factor - 1.0) * sum(n.effect for n in features)
    return Outcome(features, factor, result, predicted, left_out)


def download(circuit: Circuit) -> Path:
    """The graph file on disk, for the download button: written once per graph, in a temporary
    directory of its own."""
    if circuit.saved is None or not circuit.saved.is_file():
        where = Path(tempfile.mkdtemp(prefix="gse-graph-")) / f"{circuit.slug}.json"
        where.write_text(json.dumps(circuit.data), encoding="utf-8")
        circuit.saved = where
    return circuit.saved


def view_record(circuit: Circuit, pins: Sequence[str], threshold: float) -> dict[str, Any]:
    """What is on screen, as the address bar reads it."""
    return {
        "prompt": circuit.prompt,
        "target": circuit.target,
        "pins": list(pins),
        "threshold": threshold,
    }
