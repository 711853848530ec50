"""Our attribution graphs vs circuit-tracer's, on the same tiny model, transcoders and prompt.

Run by hand (not a test)::

    python bench/circuit_tracer_compare.py [--model gemma3|gemma2] [--skip] [--work-dir DIR]
        [--venv DIR] [--spec ==0.5.0]

circuit-tracer cannot live in this project's virtual environment: every release on PyPI so far
(0.5.0) pins ``transformers>=4.56,<=4.57.3`` and ``huggingface-hub<1`` (we need transformers 5).
The script first asks pip whether both can be installed together (``pip install --dry-run`` in a
scratch venv, nothing installed) and prints its answer; then it makes a separate venv (``--venv``,
reused when it already has circuit-tracer) and installs ``circuit-tracer`` there, with torch pinned
to our version (so a local CPU wheel serves when pip's find-links has one; otherwise pip downloads
torch). When that install fails, it says why and exits 2.

Modes (``all`` runs them in a row; the others are its steps, each in its own interpreter):

- ``ours`` (this venv): builds the seeded tiny Gemma model of ``tests/helpers.py`` as a
  transformer-lens model and random JumpReLU transcoders on every layer
  (``tests/circuits_helpers.py``), attributes the prompt with :func:`explorer.circuits.attribute`
  (no feature cap) and writes the model's config and weights, the transcoders, the tokenizer,
  the prompt and our graph to ``--work-dir``;
- ``theirs`` (the circuit-tracer venv): builds circuit-tracer's ``TransformerLensReplacementModel``
  from that config and weights, a ``TranscoderSet`` of ``SingleLayerTranscoder`` (JumpReLU, float32,
  ``ln2.hook_normalized`` -> ``hook_mlp_out``) from those transcoders, runs its ``attribute``
  (no cap) and writes its graph. One fix to its model: circuit-tracer gives every layer the same
  rotary table, which is wrong for Gemma 3 (local layers use another base; its README sends
  Gemma 3 to the nnsight backend); the script gives each layer its own table back;
- ``compare``: the same logit tokens and probabilities, the same feature nodes (layer,
  position, feature) and activations, the largest difference between the two adjacency
  matrices (absolute, and relative to the largest edge), the pruned node and edge masks (default
  thresholds) and both scores; exits 1 when the nodes differ or the adjacency differs by more
  than ``--tol`` (1e-4 relative). ``--max-feature-nodes N`` caps both sides (influence order).

Only the standard library is imported at the top: the file runs in both venvs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the cat sat on the mat and the dog ran to the"


def ours(work: Path, model_name: str, skip: bool, cap: int | None) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch
    from circuits_helpers import make_transcoders
    from helpers import make_gemma2, make_gemma3, make_tokenizer

    from explorer.circuits import attribute, prune
    from explorer.hooked import hooked_from_hf

    tok = make_tokenizer()
    hf = (make_gemma3 if model_name == "gemma3" else make_gemma2)(len(tok))
    model = hooked_from_hf(hf, tok)
    tcs = make_transcoders(
        work / "tc", hf.config.hidden_size, hf.config.num_hidden_layers, skip=skip
    )
    ids = [tok.bos_token_id, *tok(PROMPT)["input_ids"]]
    graph = prune(attribute(model, tcs, ids, max_feature_nodes=cap, batch_size=32))
    cfg = {k: (str(v) if k == "dtype" else v) for k, v in model.cfg.to_dict().items()}
    (work / "cfg.json").write_text(json.dumps(cfg, default=str))
    weights = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    torch.save(weights, work / "model.pt")  # buffers (masks, rotary tables) follow from cfg
    tc_state = [
        {
            "W_enc": tc.W_enc.detach(),
            "b_enc": tc.b_enc.detach(),
            "W_dec": tc.W_dec.detach(),
            "b_dec": tc.b_dec.detach(),
            "threshold": tc.threshold.detach(),
            "W_skip": None if getattr(tc, "W_skip", None) is None else tc.W_skip.detach(),
        }
        for tc in tcs
    ]
    torch.save(tc_state, work / "transcoders.pt")
    tok.save_pretrained(work / "tokenizer")  # tokenizer.json is read by both transformers
    specials = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (work / "tokenizer" / "specials.json").write_text(json.dumps(specials))
    (work / "prompt.json").write_text(json.dumps({"ids": ids, "cap": cap}))
    torch.save(
        {
            "adjacency": graph.adjacency,
            "features": graph.features,
            "activations": graph.activations,
            "logit_ids": torch.tensor(graph.logit_ids),
            "logit_probs": graph.logit_probs,
            "node_mask": graph.node_mask,
            "edge_mask": graph.edge_mask,
            "scores": list(graph.scores or ()),
        },
        work / "ours.pt",
    )
    print(f"ours: {graph.n_features} features, {graph.n_logits} logits, {graph.n_nodes} nodes")


def theirs(work: Path) -> None:
    import dataclasses

    import torch
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        TranscoderSet,
    )
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    raw = json.loads((work / "cfg.json").read_text())
    names = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    kept = {k: v for k, v in raw.items() if k in names and k not in ("n_params", "device")}
    kept["dtype"] = torch.float32
    cfg = HookedTransformerConfig(**kept, device="cpu")
    specials = json.loads((work / "tokenizer" / "specials.json").read_text())
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(work / "tokenizer" / "tokenizer.json"), **specials
    )
    fast.save_pretrained(work / "tokenizer-theirs")  # transformer-lens re-opens it by its path
    tok = AutoTokenizer.from_pretrained(work / "tokenizer-theirs")
    model = TransformerLensReplacementModel(cfg, tok)
    missing, unexpected = model.load_state_dict(torch.load(work / "model.pt"), strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if set(missing) - buffers or unexpected:
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    layers = {}
    for i, w in enumerate(torch.load(work / "transcoders.pt")):
        d_model, d_tc = w["W_enc"].shape
        tc = SingleLayerTranscoder(
            d_model,
            d_tc,
            JumpReLU(w["threshold"].float()),
            layer_idx=i,
            skip_connection=w["W_skip"] is not None,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        with torch.no_grad():
            tc.W_enc.copy_(w["W_enc"].T)
            tc.W_dec.copy_(w["W_dec"])
            tc.b_enc.copy_(w["b_enc"])
            tc.b_dec.copy_(w["b_dec"])
            if w["W_skip"] is not None:
                tc.W_skip.copy_(w["W_skip"])
        layers[i] = tc
    rotary = [(b.attn.rotary_sin, b.attn.rotary_cos) for b in model.blocks]
    model._configure_replacement_model(
        TranscoderSet(
            layers, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out"
        )
    )
    # circuit-tracer shares one rotary table among all layers (_deduplicate_attention_buffers);
    # Gemma 3's local layers have their own base (its README sends Gemma 3 to the nnsight
    # backend). Give each layer its own table back, so that the model is the same as ours.
    for block, (sin, cos) in zip(model.blocks, rotary, strict=True):
        block.attn.rotary_sin, block.attn.rotary_cos = sin, cos
    prompt = json.loads((work / "prompt.json").read_text())
    graph = attribute(
        torch.tensor(prompt["ids"]), model, max_feature_nodes=prompt["cap"], batch_size=32
    )
    pruned = prune_graph(graph)
    features = graph.active_features[graph.selected_features]
    torch.save(
        {
            "adjacency": graph.adjacency_matrix.cpu(),
            "features": features.cpu(),
            "activations": graph.activation_values[graph.selected_features].cpu(),
            "logit_ids": graph.logit_token_ids.cpu(),
            "logit_probs": graph.logit_probabilities.cpu(),
            "node_mask": pruned.node_mask.cpu(),
            "edge_mask": pruned.edge_mask.cpu(),
            "scores": list(compute_graph_scores(graph)),
        },
        work / "theirs.pt",
    )
    print(f"circuit-tracer: {len(features)} features, {len(graph.logit_targets)} logits")


def compare(work: Path, tol: float) -> int:
    import torch

    a, b = torch.load(work / "ours.pt"), torch.load(work / "theirs.pt")
    report: dict[str, Any] = {
        "same_logits": torch.equal(a["logit_ids"], b["logit_ids"]),
        "logit_prob_diff": float((a["logit_probs"] - b["logit_probs"]).abs().max()),
        "same_features": torch.equal(a["features"].long(), b["features"].long()),
    }
    if report["same_features"] and report["same_logits"]:
        report["activation_diff"] = float((a["activations"] - b["activations"]).abs().max())
        diff = (a["adjacency"] - b["adjacency"]).abs().max()
        scale = b["adjacency"].abs().max()
        report.update(
            n_nodes=int(a["adjacency"].shape[0]),
            nonzero_edges=int((b["adjacency"] != 0).sum()),
            adjacency_max_abs_diff=float(diff),
            adjacency_max_abs=float(scale),
            adjacency_rel_diff=float(diff / scale),
            same_pruned_nodes=torch.equal(a["node_mask"], b["node_mask"]),
            pruned_edges_differing=int((a["edge_mask"] != b["edge_mask"]).sum()),
            pruned_edges=int(b["edge_mask"].sum()),
            scores_ours=a["scores"],
            scores_theirs=b["scores"],
        )
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = report["same_features"] and report["same_logits"] and report["adjacency_rel_diff"] <= tol
    print("MATCH" if ok else "DIFFER")
    return 0 if ok else 1


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True)


def install(venv: Path, spec: str) -> Path:
    """A venv with circuit-tracer (made or reused); exits 2 saying why when pip cannot."""
    import torch

    python = venv / "bin" / "python"
    if python.exists() and _pip(python, "show", "circuit-tracer").returncode == 0:
        return python
    ours_torch = torch.__version__.split("+")[0]
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "venv", scratch], check=True)
        beside = _pip(
            Path(scratch, "bin", "python"),
            "install",
            "--dry-run",
            f"circuit-tracer{spec}",
            "transformers>=5,<6",
            f"torch=={ours_torch}",
        )
    print(
        "beside our stack (transformers>=5):",
        "possible" if beside.returncode == 0 else "impossible",
    )
    why = beside.stdout + beside.stderr
    print(
        why[why.find("The conflict is caused by") :].strip() if "conflict is" in why else why[-800:]
    )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = _pip(python, "install", f"circuit-tracer{spec}", f"torch=={ours_torch}")
    if done.returncode != 0:
        print(f"circuit-tracer{spec} cannot be installed in {venv}:", file=sys.stderr)
        print((done.stdout + done.stderr)[-2000:], file=sys.stderr)
        raise SystemExit(2)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "mode", nargs="?", default="all", choices=["all", "ours", "theirs", "compare"]
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir(), "gse-ct-compare")
    )
    parser.add_argument(
        "--venv", type=Path, default=Path(tempfile.gettempdir(), "gse-circuit-tracer-venv")
    )
    parser.add_argument("--spec", default="", help="version specifier, e.g. ==0.5.0")
    parser.add_argument("--model", choices=["gemma3", "gemma2"], default="gemma3")
    parser.add_argument("--skip", action="store_true", help="skip transcoders (W_skip)")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument(
        "--max-feature-nodes", type=int, default=None, help="the cap, on both sides"
    )
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.mode == "ours":
        ours(args.work_dir, args.model, args.skip, args.max_feature_nodes)
    elif args.mode == "theirs":
        theirs(args.work_dir)
    elif args.mode == "compare":
        raise SystemExit(compare(args.work_dir, args.tol))
    else:
        python = install(args.venv, args.spec)
        ours(args.work_dir, args.model, args.skip, args.max_feature_nodes)
        subprocess.run(
            [str(python), __file__, "theirs", "--work-dir", str(args.work_dir)], check=True
        )
        raise SystemExit(compare(args.work_dir, args.tol))


if __name__ == "__main__":
    main()
