"""Labels land on the feature shown, curated labels are not taken as the user's, and on a public
app writes need a login or the owner's key (import and retract: the owner only)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from helpers import free_port, live_feature

from explorer.app import Context, UserError, dashboard, labelling
from explorer.app.policy import WritePolicy

KEY = "s3cret-owner-key"


@dataclass
class Profile:
    """What Gradio's OAuthProfile offers the policy: a username."""

    username: str


def test_local_use_is_open_and_keeps_the_typed_name() -> None:
    policy = WritePolicy()
    assert policy.labeller("ada") == "ada"
    policy.check_owner()  # anyone may import locally


@pytest.mark.parametrize(
    ("policy", "typed", "profile", "key", "expected"),
    [
        (WritePolicy(public=True, key=KEY), "ada", None, KEY, "ada"),
        (WritePolicy(public=True, key=KEY), "", None, KEY, "owner"),
        (WritePolicy(public=True, login=True), "mallory", Profile("ada"), "", "ada"),
        (WritePolicy(public=True, key=KEY), "x", None, "wrong", UserError),
        (WritePolicy(public=True, key=KEY), "x", None, "", UserError),
        (WritePolicy(public=True, key=KEY), "x", None, KEY + " ", UserError),
        (WritePolicy(public=True), "x", None, "", UserError),  # no key, no login: read-only
        (WritePolicy(public=True), "x", None, "anything", UserError),
    ],
)
def test_public_writes_need_a_login_or_the_key(
    policy: WritePolicy, typed: str, profile, key: str, expected
) -> None:
    if expected is UserError:
        with pytest.raises(UserError, match="public"):
            policy.labeller(typed, profile, key)
    else:
        assert policy.labeller(typed, profile, key) == expected


def test_import_and_retract_are_the_owners() -> None:
    policy = WritePolicy(public=True, key=KEY, owner="ada", login=True)
    policy.check_owner(Profile("ada"))
    policy.check_owner(None, KEY)
    for profile, key in ((Profile("bob"), ""), (None, ""), (None, "nope")):
        with pytest.raises(UserError, match="owner only"):
            policy.check_owner(profile, key)


def test_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPACE_ID", "GSE_PUBLIC", "GSE_OWNER_KEY", "GSE_OWNER", "SPACE_AUTHOR_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OAUTH_CLIENT_ID", raising=False)
    assert not WritePolicy.from_env().public
    monkeypatch.setenv("SPACE_ID", "someone/explorer")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "someone")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "abc")
    on_space = WritePolicy.from_env()
    assert on_space.public and on_space.login and on_space.owner == "someone"
    assert on_space.key is None and "log in with Hugging Face" in on_space.describe()
    assert not WritePolicy.from_env(public=False).public  # an explicit choice wins


def test_a_curated_label_is_not_put_in_the_label_box(ctx: Context) -> None:
    feature = live_feature(ctx, 1)
    curated = replace(ctx, curated={(1, feature): "a curated meaning"})
    values = dashboard.open_values(curated, 1, feature)
    header, box = values[2], values[3]
    assert "a curated meaning" in header and "curated label" in header
    assert box == ""  # pressing Save with it does not copy the curated label as the user's
    with pytest.raises(UserError, match="label is empty"):
        curated.save_label(1, feature, box, "", "medium", "")
    assert curated.labels.current(1, feature) is None


def test_the_label_tab_opens_on_a_queued_feature_and_shows_what_it_saved(ctx: Context) -> None:
    shown, _, feature, header, _, history, source = labelling.first_values(ctx)
    assert shown == (shown[0], feature, "transcoder" if source == "tc" else "res")
    assert f"Layer {shown[0]} · feature {feature}" in header
    assert list(history.columns) == labelling.HISTORY_COLUMNS and history.empty


@pytest.fixture
def public_app(ctx: Context, tmp_path: Path) -> Iterator[tuple[str, Context]]:
    """The tiny app in public mode with an owner's key, on 127.0.0.1."""
    from explorer.app import build_app

    public = replace(ctx, policy=WritePolicy(public=True, key=KEY))
    demo = build_app(public)
    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield f"http://127.0.0.1:{port}/", public
    demo.close()


def test_a_public_app_over_http(public_app: tuple[str, Context], tmp_path: Path) -> None:
    """Anyone can call every endpoint: without the key nothing is written or imported."""
    from gradio_client import Client

    url, ctx = public_app
    client = Client(url, verbose=False)
    feature = live_feature(ctx)
    with pytest.raises(Exception, match="public"):
        client.predict(2, feature, "by a stranger", "mallory", "", api_name="/label_feature")
    assert ctx.labels.current(2, feature) is None
    said = client.predict(2, feature, "by the owner", "ada", KEY, api_name="/label_feature")
    assert said.startswith("Saved label")
    assert ctx.labels.current(2, feature).label == "by the owner"  # type: ignore[union-attr]

    # The UI's save goes to the feature this session shows, with the key only.
    client.predict("2", feature, api_name="/open_feature")
    with pytest.raises(Exception, match="public"):
        client.predict("no key", "x", "", api_name="/save_label")
    client.predict("with the key", "x", KEY, api_name="/save_label")
    assert ctx.labels.current(2, feature).label == "with the key"  # type: ignore[union-attr]

    # Import is the owner's.
    from gradio_client import handle_file

    upload = tmp_path / "in.csv"
    upload.write_text("layer,feature,label\n2,3,imported\n", encoding="utf-8")
    with pytest.raises(Exception, match="owner only"):
        client.predict(handle_file(str(upload)), "", api_name="/import_labels")
    assert ctx.labels.current(2, 3) is None or ctx.labels.current(2, 3).label != "imported"  # type: ignore[union-attr]
    report = client.predict(handle_file(str(upload)), KEY, api_name="/import_labels")
    assert "Imported 1" in report and ctx.labels.current(2, 3).label == "imported"  # type: ignore[union-attr]


def test_retraction_is_the_owners_and_history_keeps_it(ctx: Context, tmp_path: Path) -> None:
    feature = live_feature(ctx, 1)
    first = ctx.labels.add(1, feature, "first meaning")
    second = ctx.labels.add(1, feature, "a mistake")
    public = replace(ctx, policy=WritePolicy(public=True, key=KEY))
    with pytest.raises(UserError, match="owner only"):
        labelling.retract(public, "label", second.id, None, "")
    assert "Retracted label" in labelling.retract(public, "label", second.id, None, KEY)
    assert ctx.labels.current(1, feature).label == first.label  # type: ignore[union-attr]
    history = labelling.label_history(ctx, 1, feature)
    assert history["label"].tolist() == ["a mistake", "first meaning"]
    assert history["retracted"].iat[0] != "" and history["retracted"].iat[1] == ""
    # An import batch, retracted whole; its id is in the import report.
    upload = tmp_path / "batch.csv"
    upload.write_text("layer,feature,label\n2,1,from a file\n2,2,also\n", encoding="utf-8")
    report = labelling.import_labels(ctx, str(upload))
    batch = report.split("Import batch: ")[1].split(" ")[0]
    assert ctx.labels.current(2, 1) is not None
    assert labelling.retract(ctx, "batch", batch) == f"Retracted 2 labels of import {batch}."
    assert ctx.labels.current(2, 1) is None and ctx.labels.current(2, 2) is None
    with pytest.raises(UserError, match="already retracted"):
        labelling.retract(ctx, "label", second.id)


def test_browse_ranks_label_matches_by_full_text_search(ctx: Context) -> None:
    from explorer.app import browse

    live = ctx.summary_layer(1)
    a, b = (int(f) for f in live[~live["dead"]]["feature"].iloc[:2])
    ctx.labels.add(1, b, "Italian words", notes="and French ones, now and then")
    ctx.labels.add(1, a, "French words")
    table = browse.features(ctx, "1", "french", "feature", True, hide_dense=False)
    # The label match outranks the notes match, though the sort (feature, descending) says b.
    assert table["feature"].tolist()[:2] == [a, b]
    assert browse.features(ctx, "1", "frenc wor", hide_dense=False)["feature"].tolist()[0] == a
