"""A bounded load test: N simultaneous gradio_client sessions against an app on 127.0.0.1.

    python bench/load.py [--clients 4] [--seconds 60] [--url URL]

Without ``--url`` it starts ``python -m explorer`` (the embedded default) on a free local port and
stops it at the end. Each client loops, for a fixed time, over the three main actions: microscope
on its own text, a feature dashboard, and a steered generation with its own strength. Every answer
is checked against what the client asked and against references taken before the load:

- the microscope's tokens must be the client's own text (no cross-talk between sessions);
- the dashboard must be the feature asked for;
- the default completion (same prompt, same seed) must equal the reference taken alone, while
  other clients steer hard at the same time (steering is per call).

Prints throughput, p50/p95 latency per action, errors, mismatches and the server's resident
memory before and after. Requests and time are bounded (``--seconds``, one request in flight per
client).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PROMPT = "The old house at the end of the road"


@dataclass
class LoadReport:
    """What :func:`run_load` saw."""

    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def lines(self) -> list[str]:
        out = [
            f"{self.requests} requests in {self.seconds:.0f} s: "
            f"{self.requests / self.seconds:.2f} req/s; errors {len(self.errors)}; "
            f"mismatches {len(self.mismatches)}"
        ]
        for name, xs in sorted(self.latencies.items()):
            s = sorted(xs)
            p95 = s[int(0.95 * (len(s) - 1))]
            out.append(
                f"  {name:<10} n={len(s):<4} p50 {statistics.median(s):.2f} s  p95 {p95:.2f} s"
            )
        out += [f"  error: {e}" for e in self.errors[:5]]
        out += [f"  mismatch: {m}" for m in self.mismatches[:5]]
        return out


def _table(layer: int, feature: int, strength: float) -> dict[str, Any]:
    return {
        "headers": ["layer", "feature", "strength", "method", "label"],
        "data": [[layer, feature, strength, "add", ""]],
    }


def _generate(client: Any, table: dict[str, Any], max_new_tokens: int) -> tuple[str, str, str]:
    """The default and steered completions and the status line for ``PROMPT`` (seed 1234); a
    request the app refused (its status line says why) raises."""
    default, steered, status = client.predict(
        prompt=PROMPT,
        steering=table,
        temperature=0.7,
        max_new_tokens=max_new_tokens,
        seed=1234,
        frequency_penalty=0.0,
        api_name="/generate",
    )
    if "gse-error" in status:
        raise RuntimeError(status)
    return default, steered, status


def run_load(
    url: str,
    clients: int,
    seconds: float,
    texts: list[str],
    layers: list[str],
    feature: tuple[int, int],
    max_new_tokens: int = 8,
) -> LoadReport:
    """Drive ``url`` with ``clients`` concurrent sessions for ``seconds``; see the module doc."""
    from gradio_client import Client

    layer, feat = feature
    ref_client = Client(url, verbose=False)
    # References, alone: the default completion for the prompt and seed used under load.
    ref = _generate(ref_client, _table(layer, feat, 0.0), max_new_tokens)[0]
    # The microscope's token view (the text's tokens, each shaded by its strongest feature) as
    # HTML: the same text must give the very same view in every session.
    ref_tokens = {
        t: ref_client.predict(t, layers, "max activation", 1, "max", api_name="/microscope")[0]
        for t in texts
    }
    report = LoadReport(seconds=seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def record(name: str, t0: float) -> None:
        with lock:
            report.latencies.setdefault(name, []).append(time.monotonic() - t0)

    def worker(i: int) -> None:
        client = Client(url, verbose=False)
        text = texts[i % len(texts)]
        strength = 50.0 * (i + 1)
        step = 0
        while time.monotonic() < deadline:
            kind = ("microscope", "dashboard", "steer")[step % 3]
            step += 1
            t0 = time.monotonic()
            try:
                if kind == "microscope":
                    out = client.predict(
                        text, layers, "max activation", 1, "max", api_name="/microscope"
                    )
                    got = out[0]
                    if got != ref_tokens[text]:
                        with lock:
                            report.mismatches.append(f"client {i}: microscope view {got[:80]!r}")
                elif kind == "dashboard":
                    out = client.predict(str(layer), feat, api_name="/open_feature")
                    if f"feature {feat}<" not in out[2]:
                        with lock:
                            report.mismatches.append(f"client {i}: dashboard of another feature")
                else:
                    out = _generate(client, _table(layer, feat, strength), max_new_tokens)
                    if out[0] != ref:
                        with lock:
                            report.mismatches.append(f"client {i}: default {out[0]!r} != {ref!r}")
                record(kind, t0)
            except Exception as e:  # every failure is counted; the load goes on
                with lock:
                    report.errors.append(f"client {i} {kind}: {type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--url", help="an app already running (default: start the default)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.seconds <= 1800:
        raise SystemExit("--clients must be 1..64 and --seconds 1..1800")
    if args.url is not None:
        _report(args, args.url, None)
        return
    from app_process import app_process

    with app_process() as app:
        _report(args, app.url, app.pid)


def _report(args: argparse.Namespace, url: str, pid: int | None) -> None:
    from app_process import rss_mb

    before = rss_mb(pid) if pid else float("nan")
    texts = [
        "The cat sat on the mat.",
        "def main():\n    return 0",
        "It is a truth universally acknowledged.",
        "To be, or not to be, that is the question.",
    ]
    report = run_load(
        url,
        args.clients,
        args.seconds,
        texts,
        ["5", "9", "12", "15"],
        (9, 100),
        args.max_new_tokens,
    )
    print(f"{args.clients} clients, {args.seconds:.0f} s, {url}")
    print("\n".join(report.lines()))
    if pid:
        print(f"server memory: {before:.0f} MB before, {rss_mb(pid):.0f} MB after")


if __name__ == "__main__":
    main()
