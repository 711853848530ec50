"""``precompute explain``: the prompts against Delphi's reference examples, the client against a
scripted OpenAI-compatible server on 127.0.0.1 (retries, limits, bad replies), and whole runs on
the shipped store (scores, appends, resume, the CLI's errors)."""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import pytest
from llm_double import Script, serve

from explorer.explanations import Explanations
from explorer.paths import ASSETS_STORE
from precompute.__main__ import main
from precompute.explain import delphi_prompts as d
from precompute.explain import prompts as P
from precompute.explain.client import ChatClient, LLMConfig, LLMError, run_sync
from precompute.explain.run import ExplainConfig, run_explain

LAYER = 9


def _tokens(text: str) -> list[str]:
    return text.split("|")


# -- the prompts, against Delphi's own examples ------------------------------------------------


def test_highlight_and_activations_reproduce_delphis_example() -> None:
    """Delphi's explainer example 2 (its line 3) from tokens and activations: the same marks."""
    tokens = _tokens(" the| hole| was| small|er| but| deep|er| than| the")
    acts = [0, 0, 0, 0.5, 9, 0.1, 0.2, 9, 0, 0]
    line = P.highlight(tokens, acts)
    assert line == " the hole was small<<er>> but deep<<er>> than the"
    assert f"Example 3: {line}\n" in d.EXPLAINER_FEW_SHOT[1][0]
    assert P.join_activations(tokens, acts, max_act=10) == ('Activations: ("er" : 9), ("er" : 9), ')
    # Consecutive tokens above the threshold form one run, as in "<<over the moon>>".
    run = _tokens(" and| he| was |over| the| moon| to| find")
    line = P.highlight(run, [0, 0, 0, 5, 6, 9, 0, 0])
    assert line == " and he was <<over the moon>> to find"
    assert f"Example 1: {line}\n" in d.EXPLAINER_FEW_SHOT[0][0]


def test_fuzzing_marks_like_delphis_reference_examples() -> None:
    """Delphi's fuzzing example 3 marks `` of`` (the activating token) in each context."""
    tokens = _tokens(" climate,| Tomblin’s| Chief| of| Staff")
    assert P.fuzz_activating(tokens, [0, 0, 0.5, 4, 0]) == " climate, Tomblin’s Chief<< of>> Staff"
    assert "Chief<< of>> Staff" in d.FUZZING_FEW_SHOT[2][0]
    # A false context marks exactly n tokens, the one at len - len // 4 among them.
    wrong = P.fuzz_wrong([f" t{i}" for i in range(8)], 2, random.Random(0))
    marked = "".join(re.findall(r"<<(.*?)>>", wrong))
    assert marked.count(" t") == 2 and " t6" in marked


def test_parsing_replies() -> None:
    for _, reply in d.DETECTION_FEW_SHOT + d.FUZZING_FEW_SHOT:
        parsed = P.parse_predictions(reply, 5)
        assert parsed is not None and len(parsed) == 5
    assert P.parse_predictions("Sure! [1, 0, 1]", 3) == [True, False, True]
    assert P.parse_predictions("[1, 0]", 3) is None
    assert P.parse_predictions("[2, 0, 1]", 3) is None
    assert P.parse_predictions("no list", 3) is None
    assert P.parse_explanation("thinking…\n[EXPLANATION]: Python print calls\nmore") == (
        "Python print calls",
        True,
    )
    assert P.parse_explanation("\n  quotes in strings\n") == ("quotes in strings", False)


def test_balanced_accuracy() -> None:
    truth = [True, True, True, False]
    assert P.balanced_accuracy(truth, [True, True, True, True]) == 0.5
    assert P.balanced_accuracy(truth, [True, True, False, False]) == pytest.approx((2 / 3 + 1) / 2)
    assert P.balanced_accuracy(truth, [None, None, None, None]) == 0.0


# -- the client --------------------------------------------------------------------------------


def _chat(url: str, **kw: object) -> tuple[str, ChatClient]:
    cfg = LLMConfig(url=url, model="m", backoff_s=0.01, **kw)  # type: ignore[arg-type]

    async def go() -> tuple[str, ChatClient]:
        async with ChatClient(cfg) as c:
            return await c.chat([{"role": "user", "content": "hi"}]), c

    return run_sync(go())


def test_client_retries_429_and_5xx_then_succeeds() -> None:
    script = Script(fail=[429, 500, 503])
    with serve(script) as url:
        text, c = _chat(url, retries=3)
    assert text == script.explanation
    assert c.usage.requests == 4 and c.usage.retries == 3
    assert c.usage.prompt_tokens == 100 and c.usage.completion_tokens == 10


def test_client_gives_up_and_does_not_retry_client_errors() -> None:
    with serve(Script(fail=[500] * 5)) as url, pytest.raises(LLMError, match="gave up after 3"):
        _chat(url, retries=2)
    script = Script(fail=[400])
    with serve(script) as url, pytest.raises(LLMError, match="HTTP 400"):
        _chat(url, retries=5)
    assert len(script.bodies) == 1


def test_client_refuses_a_reply_that_is_not_a_completion(tmp_path: Path) -> None:
    with serve(Script()) as url, pytest.raises(LLMError, match="HTTP 404"):
        _chat(url.replace("/v1", "/v2"))


def test_client_sends_the_key_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test")
    seen: list[str] = []
    cfg = LLMConfig(url="http://127.0.0.1:9/v1", model="m", api_key_env="MY_KEY")
    client = ChatClient(cfg)
    seen.append(client._http.headers.get("authorization", ""))
    run_sync(client.__aexit__())
    assert seen == ["Bearer sk-test"]


# -- whole runs on the shipped store -----------------------------------------------------------


def _cfg(tmp_path: Path, features: tuple[int, ...], **kw: object) -> ExplainConfig:
    return ExplainConfig(
        store=ASSETS_STORE,
        explanations=tmp_path / "expl.sqlite",
        layers=(LAYER,),
        features=features,
        n_test=4,
        per_prompt=4,
        **kw,  # type: ignore[arg-type]
    )


def test_run_scores_appends_and_resumes(tmp_path: Path) -> None:
    script = Script()  # answers "1" for every context: balanced accuracy exactly 0.5
    with serve(script) as url:
        llm = LLMConfig(url=url, model="double", concurrency=2, backoff_s=0.01)
        first = run_explain(_cfg(tmp_path, (0, 1, 2), limit=2), llm, progress=False)
        db = Explanations(tmp_path / "expl.sqlite")
        rows_before = {(r.layer, r.feature): r for f in (0, 1) for r in db.history(LAYER, f)}
        second = run_explain(_cfg(tmp_path, (0, 1, 2)), llm, progress=False)
    assert (first.done, first.skipped) == (2, 0)
    assert (second.done, second.skipped) == (1, 2)
    assert db.count() == 3
    for f in (0, 1, 2):
        best = db.best(LAYER, f)
        assert best is not None and best.text == "words about queues"
        assert best.detection == best.fuzzing == best.score == 0.5
        assert best.n_scored == 8 and best.extra["format_followed"] is True
        assert best.source == "llm" and best.model == "double"
    # Rows written by the first run are unchanged by the second.
    assert {(r.layer, r.feature): r for f in (0, 1) for r in db.history(LAYER, f)} == rows_before
    # One explainer and 2 × 2 scorer requests per feature (8 contexts of each kind, 4 a prompt).
    assert len(script.bodies) == 3 * 5
    assert first.usage.prompt_tokens == 10 * 100
    explained = [
        b for b in script.bodies if "Latent explanation" not in b["messages"][-1]["content"]
    ]
    assert len(explained) == 3 and "<<" in explained[0]["messages"][-1]["content"]


def test_unparsed_scores_count_as_wrong(tmp_path: Path) -> None:
    with serve(Script(wrong_length=True)) as url:
        llm = LLMConfig(url=url, model="double", backoff_s=0.01)
        run_explain(_cfg(tmp_path, (3,)), llm, progress=False)
    best = Explanations(tmp_path / "expl.sqlite").best(LAYER, 3)
    assert best is not None and best.score == 0.0 and best.extra["unparsed_predictions"] == 16


def test_run_keeps_to_the_concurrency_limit(tmp_path: Path) -> None:
    script = Script(delay_s=0.05)
    with serve(script) as url:
        llm = LLMConfig(url=url, model="double", concurrency=3, backoff_s=0.01)
        run_explain(_cfg(tmp_path, (0, 1, 2, 3)), llm, progress=False)
    assert script.max_active == 3


def test_run_stops_after_repeated_failures_and_keeps_what_was_done(tmp_path: Path) -> None:
    script = Script(fail=[400] * 100)
    with serve(script) as url:
        llm = LLMConfig(url=url, model="double", concurrency=1, backoff_s=0.01)
        with pytest.raises(LLMError, match="stopped after 2 features failed"):
            run_explain(_cfg(tmp_path, (0, 1, 2), max_failures=2), llm, progress=False)
    assert Explanations(tmp_path / "expl.sqlite").count() == 0


def _first_dead(layer: int) -> int:
    """The first dead feature of the shipped store's layer (it has no examples to explain)."""
    from explorer.store import Store

    dead = Store.open(ASSETS_STORE).features(layer, ["dead"])["dead"].to_numpy()
    assert dead.any()
    return int(dead.argmax())


def test_cli_explain_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.sqlite"
    base = ["explain", "--store", str(ASSETS_STORE), "--explanations", str(out)]
    with serve(Script()) as url:
        args = [*base, "--llm-url", url, "--llm-model", "double", "--layers", "9"]
        assert main([*args, "--features", "4", "--n-test", "2", "--no-progress"]) == 0
        printed = capsys.readouterr().out
        assert "explained 1 features" in printed and "tokens" in printed
        dead = _first_dead(5)
        assert main([*args, "--layers", "5", "--features", str(dead), "--no-progress"]) == 0
        assert "explained 0 features (0 done before, 0 failed, 1 with too few examples)" in (
            capsys.readouterr().out
        )
        assert main([*args, "--layers", "7", "--features", "4"]) == 2
        assert "layer 7 is not in the store" in capsys.readouterr().err
        assert main([*args, "--features", "999999"]) == 2
        assert "past layer 9's width" in capsys.readouterr().err
    assert main([*base, "--llm-url", "ftp://x", "--llm-model", "m"]) == 2
    assert capsys.readouterr().err.startswith("error: --llm-url must start with http")
    # Nothing listens on port 9: the feature fails, the run says so and exits 1, saving nothing.
    closed = [*base, "--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--retries", "0"]
    assert main([*closed, "--layers", "9", "--features", "5", "--no-progress"]) == 1
    assert "(0 done before, 1 failed)" in capsys.readouterr().out
    assert sqlite3.connect(out).execute("SELECT count(*) FROM explanations").fetchone()[0] == 1


def test_system_messages_folded_for_models_without_a_system_role() -> None:
    script = Script()
    with serve(script) as url:
        _chat(url, system_role=False)
        messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        cfg = LLMConfig(url=url, model="m", system_role=False)

        async def go() -> None:
            async with ChatClient(cfg) as c:
                await c.chat(messages)

        run_sync(go())
    assert script.bodies[-1]["messages"] == [{"role": "user", "content": "S\n\nU"}]
    assert messages[1]["content"] == "U"  # the caller's messages are left as they were
