"""Steering's one way in and its screen, on the tiny app.

Every shape a steering table can arrive in, and every odd input, goes through
:func:`explorer.app.steering.parse_steers`: the same message through the handler, through
``gradio_client`` over HTTP, and (for what ``gradio_client`` cannot send: lone surrogates) through
Gradio's plain HTTP route. A refused request keeps the previous completions and says why in the
status line, escaped. Stop cancels a generation and frees its worker. The generate endpoint's
parameters have names.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import live_feature

from explorer.app import Context, UserError, steering
from explorer.steer import Steer

PROMPT = "the cat sat on the"
HOSTILE = '<img src=x onerror="window.__pwned=1">'
S = 5.0  # a valid strength

# (name, steering table, the one line the user reads). Every table is valid JSON.
BAD_TABLES: list[tuple[str, Any, str]] = [
    ("null table", None, "add at least one feature to steer with"),
    ("no rows", [], "add at least one feature to steer with"),
    ("only blank rows", [["", "", "", "", ""]], "add at least one feature to steer with"),
    (
        "id with letters",
        [[2, "12abc", S, "add"]],
        "row 1: feature must be a whole number such as 12, not '12abc'",
    ),
    (
        "id in exponent form",
        [[2, "1e3", S, "add"]],
        "row 1: feature must be a whole number such as 12, not '1e3'",
    ),
    (
        "fractional id as text",
        [[2, "3.5", S, "add"]],
        "row 1: feature must be a whole number such as 12, not '3.5'",
    ),
    ("fractional id", [[2, 3.5, S, "add"]], "row 1: feature must be a whole number, not '3.5'"),
    ("boolean id", [[2, True, S, "add"]], "row 1: feature must be a whole number, not True"),
    ("negative id", [[2, -1, S, "add"]], "row 1: feature must be from 0 to 47, not -1"),
    ("id past the width", [[2, 48, S, "add"]], "row 1: feature must be from 0 to 47, not 48"),
    (
        "layer without SAE",
        [[9, 3, S, "add"]],
        "row 1: layer 9 has no SAE here; the layers are 1, 2",
    ),
    (
        "NaN strength",
        [[2, 3, "nan", "add"]],
        "row 1: strength must be a number from -100000 to 100000, not 'nan'",
    ),
    (
        "infinite strength",
        [[2, 3, "-inf", "add"]],
        "row 1: strength must be a number from -100000 to 100000, not '-inf'",
    ),
    (
        "huge strength",
        [[2, 3, 1e30, "add"]],
        "row 1: strength must be a number from -100000 to 100000, not 1e+30",
    ),
    ("integer past float", [[2, 3, 10**400, "add"]], "row 1: strength is far too large: 1000"),
    ("id past 64 bits", [[2, 10**30, S, "add"]], "row 1: feature is far too large: 1000"),
    (
        "unknown method",
        [[2, 3, S, "multiply"]],
        "row 1: method must be add, clamp or ablate, not 'multiply'",
    ),
    (
        "markup as method",
        [[2, 3, S, HOSTILE]],
        f"row 1: method must be add, clamp or ablate, not '{HOSTILE}'",
    ),
    (
        "too many rows",
        [[2, 3, S, "add"]] * 50,
        "at most 8 steering features at once; this table has 50: remove some rows",
    ),
    ("missing cells", [[2]], "row 1: feature is missing: enter a whole number"),
    ("missing layer", [[None, 3, S]], "row 1: layer is missing: enter a whole number"),
    (
        "too many cells",
        [[2, 3, S, "add", "", "", "res", "x"]],
        "row 1 has 8 cells; the table has 7 columns",
    ),
    (
        "second row bad",
        [[2, 3, S, "add"], [1, "x", S, "add"]],
        "row 2: feature must be a whole number such as 12, not 'x'",
    ),
    ("row not a list", [5], "row 1 must be a list of cells, not int"),
    (
        "unknown column",
        {"headers": ["layer", "featur"], "data": [[2, 3]]},
        "the steering table has an unknown column 'featur'; its columns are layer, feature, "
        "strength, method, label",
    ),
    (
        "not a table",
        "2, 3, 5",
        "the steering table must be rows of [layer, feature, strength, method], not str",
    ),
]

# Lone surrogates: valid JSON ("\ud800"), but no gradio_client can send them (it encodes UTF-8).
SURROGATE_TABLES: list[tuple[str, Any, str]] = [
    (
        "surrogate layer",
        [["\ud800", 3, S]],
        "row 1: layer must be a whole number such as 12, not '\\ud800'",
    ),
    (
        "surrogate strength",
        [[2, 3, "1\udfff"]],
        "row 1: strength must be a number from -100000 to 100000, not '1\\udfff'",
    ),
    (
        "surrogate method",
        [[2, 3, S, "add\ud800"]],
        "row 1: method must be add, clamp or ablate, not 'add\\ud800'",
    ),
]
GOOD = [[2, 3, S, "add"]]

# (name, prompt, settings (temperature, max new tokens, seed, frequency penalty), message)
BAD_SETTINGS: list[tuple[str, Any, tuple[Any, ...], str]] = [
    ("NaN temperature", PROMPT, ("nan", 3, 0, 0), "temperature must be a number from 0 to 5"),
    (
        "token count in exponent form",
        PROMPT,
        (0, "1e3", 0, 0),
        "max new tokens must be a whole number such as 12, not '1e3'",
    ),
    ("too many tokens", PROMPT, (0, 129, 0, 0), "max new tokens must be from 1 to 128, not 129"),
    ("negative seed", PROMPT, (0, 3, -1, 0), "seed must be from 0 to"),
    ("infinite penalty", PROMPT, (0, 3, 0, "inf"), "frequency penalty must be a number"),
    ("blank prompt", "   ", (0, 3, 0, 0), "the prompt is empty: type a prompt to continue"),
    ("null prompt", None, (0, 3, 0, 0), "the prompt is empty: type a prompt to continue"),
    ("number as prompt", 12, (0, 3, 0, 0), "the prompt must be text, not int"),
]
SURROGATE_PROMPT = (
    "the\ud800 cat",
    "the prompt has a broken character (a lone surrogate) at position 3: remove it",
)


def _status(message: str) -> str:
    """The status line's text for a refused request, as the page receives it (escaped)."""
    return "Not generated: " + html.escape(message, quote=False)


# --- the handler --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [pytest.param(t, m, id=n) for n, t, m in BAD_TABLES + SURROGATE_TABLES]
    + [
        pytest.param(
            [[2, 3, float("nan"), "add"]],
            "row 1: strength must be a number from -100000 to 100000, not nan",
            id="NaN number strength",
        )
    ],
)
def test_odd_tables_are_one_line_from_the_handler(ctx: Context, table: Any, message: str) -> None:
    with pytest.raises(UserError) as err:
        list(steering.steer(ctx, PROMPT, table, 0, 3, 0, 0))
    assert message in str(err.value)
    # The page's handler never raises: the completions on screen stay, the status says why.
    shown = ("an earlier default", "an earlier steered")
    out = list(steering.generate_view(ctx, PROMPT, table, 0, 3, 0, 0, shown))
    assert len(out) == 1
    default, steered, status, kept = out[0]
    assert (default, steered) == shown == kept
    assert _status(message) in status
    assert "<img" not in status and "\ud800" not in status


@pytest.mark.parametrize(
    ("prompt", "settings", "message"),
    [pytest.param(p, s, m, id=n) for n, p, s, m in BAD_SETTINGS]
    + [pytest.param(SURROGATE_PROMPT[0], (0, 3, 0, 0), SURROGATE_PROMPT[1], id="surrogate")],
)
def test_odd_prompts_and_settings_are_one_line_from_the_handler(
    ctx: Context, prompt: Any, settings: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(UserError) as err:
        list(steering.steer(ctx, prompt, GOOD, *settings))
    assert message in str(err.value)
    temperature, max_new_tokens, seed, penalty = settings
    (out,) = steering.generate_view(
        ctx, prompt, GOOD, temperature, max_new_tokens, seed, penalty, ("a", "b")
    )
    assert out[:2] == ("a", "b") and message in out[2]


def test_every_table_shape_reads_the_same(ctx: Context) -> None:
    """The page's DataFrame, the API's dict or bare rows, and Steer lists: one result."""
    default = steering.default_strength(ctx, 1, 7)
    want = [Steer(2, 3, 5.0, "add"), Steer(1, 7, default, "clamp"), Steer(2, 4, 0.0, "ablate")]
    frame = pd.DataFrame(
        [
            [2, 3, 5.0, "add", "a label", "likely to steer (0.60)", "res"],
            [1, 7, np.nan, "clamp", None, None, None],
            [2, 4, np.nan, "ablate", "", "", ""],
        ],
        columns=list(steering.STEER_COLUMNS),
    )
    shapes = [
        frame,
        frame.astype(object),  # what the browser sends once a cell is edited: text
        {
            "headers": list(steering.STEER_COLUMNS),
            "data": [[2, 3, 5.0, "add", "x"], [1, 7, None, "clamp", None], [2, 4, "", "ablate"]],
        },
        # Columns in another order, and the label column left out.
        {
            "headers": ["method", "feature", "layer", "strength"],
            "data": [["add", 3, 2, 5], ["clamp", 7, 1, None], ["ablate", 4, 2, ""]],
        },
        {"data": [[2, 3, 5.0], [1, 7, None, "clamp"], [2, 4, None, "ablate"]]},  # no headers
        # Text cells: whole numbers as digits (3.0 included), a capitalised method, an empty row.
        [
            ["2", "3.0", "5", " Add "],
            ["", "", "", ""],
            ["1", "+7", "", "CLAMP"],
            [2, 4, "", "ablate"],
        ],
        want,
    ]
    for shape in shapes:
        assert steering.parse_steers(ctx, shape) == want
    # The add form reads its new row with the same rules.
    assert steering.add_steer(ctx, want[:2], "2", "4.0", None, "ablate") == want
    with pytest.raises(UserError, match="the new feature: feature must be a whole number such"):
        steering.add_steer(ctx, None, 2, "1e3")
    with pytest.raises(UserError, match="at most 8 steering features at once: remove one first"):
        steering.add_steer(ctx, [[2, f, 1.0] for f in range(8)], 2, 9)
    # The page's table shows each feature's label from the database, whatever a client sent.
    ctx.save_label(2, 3, "a saved label", "", "medium", "")
    table = steering.with_feature(ctx, frame, 2, 5, "1")
    assert table["label"].tolist() == ["a saved label", "", "", ""]
    assert steering.parse_steers(ctx, table)[:3] == want


def test_steer_refuses_wrong_types() -> None:
    """The library's own check, for callers that do not come through the app."""
    from explorer.steer import SteerError

    make: Any = Steer  # called with the wrong types on purpose
    assert make(np.int64(2), np.int64(3), np.float32(1.5)) == Steer(2, 3, 1.5)
    for args in [(2, 1.5), (2, True), (2, 3, "5")]:
        with pytest.raises(SteerError, match="must be a"):
            make(*args)


# --- over HTTP ----------------------------------------------------------------------------------


def test_odd_input_over_http_keeps_the_completions(served: str, ctx: Context) -> None:
    from gradio_client import Client

    client = Client(served, verbose=False)
    feature = live_feature(ctx)
    good = {"headers": ["layer", "feature", "strength"], "data": [[2, feature, 300.0]]}
    first = client.predict(
        prompt=PROMPT,
        steering=good,
        temperature=0,
        max_new_tokens=4,
        seed=0,
        frequency_penalty=0,
        api_name="/generate",
    )
    assert "stopped at the token limit" in first[2] and first[0] and first[1] != first[0]
    for name, table, message in BAD_TABLES:
        out = client.predict(PROMPT, table, 0, 4, 0, 0, api_name="/generate")
        assert tuple(out[:2]) == tuple(first[:2]), name  # the completions on screen stay
        assert _status(message) in out[2], name
    for name, prompt, settings, message in BAD_SETTINGS:
        out = client.predict(prompt, good, *settings, api_name="/generate")
        assert tuple(out[:2]) == tuple(first[:2]), name
        assert message in out[2], name
    # The app still generates, the same as before.
    again = client.predict(PROMPT, good, 0, 4, 0, 0, api_name="/generate")
    assert tuple(again[:2]) == tuple(first[:2]) and "stopped at the" in again[2]


def test_lone_surrogates_over_plain_http(served: str) -> None:
    """A browser's JSON may carry lone surrogates (``"\\ud800"``); gradio_client cannot send
    them, so this posts to Gradio's plain HTTP route (``/gradio_api/call/generate``)."""
    import httpx

    cases = [(PROMPT, table, message) for _, table, message in SURROGATE_TABLES]
    cases.append((SURROGATE_PROMPT[0], GOOD, SURROGATE_PROMPT[1]))
    for prompt, table, message in cases:
        body = json.dumps({"data": [prompt, table, 0, 3, 0, 0]})  # ASCII: surrogates escaped
        assert "\\ud800" in body or "\\udfff" in body
        posted = httpx.post(
            served + "gradio_api/call/generate",
            content=body.encode("ascii"),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        posted.raise_for_status()
        stream = httpx.get(
            served + f"gradio_api/call/generate/{posted.json()['event_id']}", timeout=60
        ).text
        assert "event: complete" in stream, stream
        final = json.loads(stream.rsplit("data:", 1)[1])
        assert _status(message) in final[2]


def test_generate_api_has_named_parameters(served: str) -> None:
    from gradio_client import Client

    info = Client(served, verbose=False).view_api(return_format="dict", print_info=False)
    endpoint = info["named_endpoints"]["/generate"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names == [
        "prompt",
        "steering",
        "temperature",
        "max_new_tokens",
        "seed",
        "frequency_penalty",
    ]
    assert len(endpoint["returns"]) == 3  # default, steered, status (the session's state is not)
    table = endpoint["parameters"][1]["type"]
    assert {"headers", "data"} <= set(table["properties"])  # the table's schema is documented


def test_every_event_reads_the_table_as_sent(served: str, ctx: Context) -> None:
    """The Add button and the dashboard's "steer with this feature" (replace the rows) and "add
    it to the steering table" (keep them) take the table in any shape too, and answer a bad one
    with a message, not an error."""
    from gradio_client import Client

    client = Client(served, verbose=False)
    feature = live_feature(ctx)
    table = client.predict([[1, "3.0"]], "2", feature, "", "clamp", api_name="/add_steer")
    assert [row[:4] for row in table["data"]] == [
        [1, 3, steering.default_strength(ctx, 1, 3), "add"],
        [2, feature, steering.default_strength(ctx, 2, feature), "clamp"],
    ]
    client.predict("2", feature, api_name="/open_feature")  # "steer with" the feature shown
    opened = client.predict({"data": [[1, 3, 2.5]]}, api_name="/add_to_steer")
    assert [row[:3] for row in opened["data"]] == [[1, 3, 2.5], [2, feature, table["data"][1][2]]]
    # "Steer with this feature" replaces the rows: only the feature shown is steered.
    alone = client.predict({"data": [[1, 3, 2.5]]}, api_name="/to_steer")
    assert [row[:3] for row in alone["data"]] == [[2, feature, table["data"][1][2]]]
    # A refused Add leaves the table alone (the page shows a warning).
    refused = client.predict([[1, "1e3"]], "2", feature, "", "add", api_name="/add_steer")
    assert refused == {"__type__": "update"}


def test_stop_cancels_generations_and_frees_their_workers(
    served: str, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four slow generations fill the generate event's four workers; cancelling them (what the
    Stop button does, through Gradio's ``/cancel``) stops their loops, and a fifth request is
    served at once instead of after the half minute the others would have taken."""
    from gradio_client import Client

    from explorer.app import build_app

    steps: list[float] = []
    real = steering.generate_pair

    def slow_pair(*args: Any) -> Any:
        for step in real(*args):
            if args[1].startswith("slowly"):
                steps.append(time.monotonic())
                time.sleep(0.25)  # 128 tokens: 32 s
            yield step

    monkeypatch.setattr(steering, "generate_pair", slow_pair)
    slow = {"data": [[2, 3, S]]}
    jobs = [
        Client(served, verbose=False).submit(
            "slowly the cat", slow, 0, 128, 0, 0, api_name="/generate"
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 60
    while not all(job.outputs() for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(job.outputs() for job in jobs)  # all four are generating
    for job in jobs:
        assert job.cancel()
    time.sleep(1.0)  # a step under way when cancelled may still finish
    stopped_at = len(steps)
    t0 = time.monotonic()
    fast = Client(served, verbose=False).predict(PROMPT, slow, 0, 3, 0, 0, api_name="/generate")
    assert time.monotonic() - t0 < 10
    assert "stopped at the token limit" in fast[2]
    time.sleep(1.0)
    assert len(steps) == stopped_at < 4 * 128  # the cancelled loops run no more steps
    # The Stop button is what cancels the generate event on the page.
    demo = build_app(ctx)
    deps = demo.config["dependencies"]
    generate = next(d["id"] for d in deps if d["api_name"] == "generate")
    stop_id = next(
        i for i, b in demo.blocks.items() if getattr(b, "elem_id", None) == "stop-generate"
    )
    assert any(
        generate in d["cancels"] and (stop_id, "click") in map(tuple, d["targets"]) for d in deps
    ), deps
