"""``python -m explorer graph``: the attribution graph of a prompt's next token, as a file that
circuit-tracer's viewer and Neuronpedia's graph pages read (:func:`explorer.circuits.to_json`).

The bundle must have a transcoder on every layer of its model (``BundleSpec.transcoders``);
the command says which preset has none before it loads anything.

``--curated`` (re)writes the app's curated graphs instead: every entry of
``assets/graphs/index.json`` (:mod:`explorer.circuits.library`) becomes ``<slug>.json`` beside
it, a one-token graph as the Circuits tab draws it (:func:`graph_data`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.bundle import BundleError

if TYPE_CHECKING:
    from explorer.bundle import Bundle, BundleSpec
    from explorer.circuits.graph import Graph


class GraphInputError(ValueError):
    """A prompt, target or setting the graph command refuses; the message says why."""


@dataclass(frozen=True)
class GraphRequest:
    prompt: str
    target: str | None = None
    max_tokens: int = 64
    max_feature_nodes: int = 1024
    max_n_logits: int = 10
    node_threshold: float = 0.8
    edge_threshold: float = 0.98


def check_spec(spec: BundleSpec) -> None:
    """Refuse a bundle without transcoders before anything is loaded."""
    if not spec.transcoders:
        hint = (
            " (train them with `python -m precompute train-transcoders --recipe default`)"
            if spec.name == "default"
            else ""
        )
        raise BundleError(
            f"preset {spec.name!r} has no transcoders, and a graph needs one per layer{hint}"
        )


def prompt_ids(bundle: Bundle, req: GraphRequest) -> list[int]:
    """The prompt's token ids, BOS first; an empty or too long prompt is refused."""
    if not req.prompt.strip():
        raise GraphInputError("the prompt is empty: give the text whose next token to explain")
    ids = list(bundle.tokenizer(req.prompt, add_special_tokens=True).input_ids)
    bos = bundle.tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    if len(ids) > req.max_tokens:
        raise GraphInputError(
            f"the prompt is {len(ids)} tokens (BOS included); at most {req.max_tokens} "
            "(--max-tokens)"
        )
    return ids


def target_id(bundle: Bundle, target: str | None) -> int | None:
    """The vocabulary id of a one-token target text (``" Paris"``), or ``None`` for the top
    predictions; a text of several tokens, or none, is refused with the tokens it makes."""
    if target is None:
        return None
    ids = list(bundle.tokenizer(target, add_special_tokens=False).input_ids)
    if len(ids) != 1:
        pieces = bundle.tokenizer.convert_ids_to_tokens(ids)
        raise GraphInputError(
            f"the target {target!r} is {len(ids)} tokens ({pieces!r}), not one: give a single "
            "token, e.g. with its leading space"
        )
    return int(ids[0])


def build_graph(bundle: Bundle, req: GraphRequest, progress: Any = None) -> Graph:
    """The (unpruned) graph of ``req`` on ``bundle``'s model and transcoders."""
    from explorer.circuits import attribute

    ids = prompt_ids(bundle, req)
    target = target_id(bundle, req.target)
    n_layers = int(bundle.model.cfg.n_layers)
    missing = [n for n in range(n_layers) if n not in bundle.spec.transcoder_layers]
    if missing:
        raise BundleError(
            f"a graph needs a transcoder on every layer; {bundle.spec.name!r} has none on "
            f"layers {', '.join(map(str, missing))}"
        )
    transcoders = [bundle.transcoder(n) for n in range(n_layers)]
    return attribute(
        bundle.model,
        transcoders,
        ids,
        target=target,
        max_feature_nodes=req.max_feature_nodes,
        max_n_logits=req.max_n_logits,
        progress=progress,
    )


def slug_of(prompt: str) -> str:
    """A file-name-safe slug from the prompt's first words."""
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return words[:48].rstrip("-") or "graph"


def graph_data(
    bundle: Bundle, req: GraphRequest, slug: str | None = None, progress: Any = None
) -> dict[str, Any]:
    """The pruned graph file of ``req`` as the app draws it: its ``prompt`` is the text as given
    (not the decoded tokens), its ``scan`` the preset's name."""
    from explorer.circuits import prune, to_json

    graph = build_graph(bundle, req, progress)
    graph = replace(graph, prompt=req.prompt, scan=graph.scan or bundle.spec.name)
    pruned = prune(graph, req.node_threshold, req.edge_threshold)
    return to_json(pruned, slug or slug_of(req.prompt))


def write_curated(bundle: Bundle, directory: Path) -> list[str]:
    """Write every curated graph of ``directory/index.json`` beside it; one line per file."""
    import json

    from explorer.circuits.library import EDGE_THRESHOLD, NODE_THRESHOLD, read_index
    from explorer.files import atomic_writer

    preset, graphs = read_index(directory)
    if preset != bundle.spec.name:
        raise BundleError(
            f"{directory / 'index.json'} lists graphs of preset {preset!r}, not "
            f"{bundle.spec.name!r}"
        )
    lines = []
    for g in graphs:

        def progress(done: int, total: int, slug: str = g.slug) -> None:
            print(f"\r{slug}: backward passes {done}/{total}", end="", file=sys.stderr, flush=True)

        req = GraphRequest(
            prompt=g.prompt,
            target=g.target,
            max_n_logits=1,
            node_threshold=NODE_THRESHOLD,
            edge_threshold=EDGE_THRESHOLD,
        )
        data = graph_data(bundle, req, slug=g.slug, progress=progress)
        print(file=sys.stderr)
        out = directory / f"{g.slug}.json"
        with atomic_writer(out) as f:
            f.write(json.dumps(data, separators=(",", ":")).encode())
        scores = data["metadata"]["scores"] or {}
        lines.append(
            f"{out}: {out.stat().st_size / 1024:.0f} KB, {len(data['nodes'])} nodes, "
            f"{len(data['links'])} links, replacement {scores.get('replacement', 0):.2f}"
        )
    return lines


def write_graph(bundle: Bundle, req: GraphRequest, out: Path) -> str:
    """Build, prune and write the graph of ``req`` to ``out``; returns a one-paragraph summary."""
    from explorer.circuits import prune, to_json

    def progress(done: int, total: int) -> None:
        print(f"\rbackward passes: {done}/{total}", end="", file=sys.stderr, flush=True)

    graph = build_graph(bundle, req, progress)
    print(file=sys.stderr)
    pruned = prune(graph, req.node_threshold, req.edge_threshold)
    data = to_json(pruned, slug_of(req.prompt), path=out)
    from explorer.circuits import scores as graph_scores

    found = graph.scores or graph_scores(graph)
    top = ", ".join(
        f"{tok!r} {float(p):.2f}"
        for tok, p in zip(graph.logit_tokens, graph.logit_probs.tolist(), strict=False)
    )
    return (
        f"wrote {out}: {len(data['nodes'])} nodes and {len(data['links'])} links after pruning "
        f"(node threshold {req.node_threshold}, edge threshold {req.edge_threshold}); "
        f"targets {top}; replacement score {found.replacement:.3f}, completeness "
        f"{found.completeness:.3f}"
    )
