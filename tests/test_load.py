"""The load script with a small N against the tiny app: no errors and no cross-talk."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import live_feature

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from load import run_load


def test_concurrent_sessions_get_their_own_answers(served: str, ctx) -> None:
    feature = live_feature(ctx)
    report = run_load(
        served,
        clients=3,
        seconds=8,
        texts=["the cat sat on the mat", "a big dog ran to the house", "the sun and the moon"],
        layers=["1", "2"],
        feature=(2, feature),
        max_new_tokens=6,
    )
    assert report.errors == []
    assert report.mismatches == []
    assert set(report.latencies) == {"microscope", "dashboard", "steer"}
    assert report.requests >= 9
