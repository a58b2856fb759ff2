"""Validation of items before anything is written (no server needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framefleet.queue import InvalidItem, NewItem, default_id, parse_inbox_entry
from framefleet.queue.model import uri_script_args


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/key.mp4",
        "s3://b/a/b/c.webm",
        "/data/v.mp4",
        "/data/with space.mp4",
        "file:///data/v.mp4",
        "https://cdn.example.com/v.mp4?sig=1",
        "http://h",
        "/é.mp4",
    ],
)
def test_accepted_uris(uri: str) -> None:
    assert NewItem(uri).uri == uri
    assert uri_script_args(uri, "1") == NewItem(uri).script_args("1")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("relative/v.mp4", "invalid uri"),
        ("ftp://h/v.mp4", "invalid uri"),
        ("s3://bucket", "invalid uri"),
        ("s3://bucket/", "invalid uri"),
        ("file://host/v.mp4", "invalid uri"),
        ("/", "invalid uri"),
        ("", "uri is empty"),
        ("/v\n.mp4", "control character"),
        ("/v\x00.mp4", "control character"),
        ("/bad\ud800.mp4", "not valid UTF-8"),
        ("/" + "a" * 1024, "longer than 1024 bytes"),
        ("/" + "é" * 512, "longer than 1024 bytes"),
    ],
)
def test_refused_uris(uri: str, reason: str) -> None:
    with pytest.raises(InvalidItem, match=reason):
        NewItem(uri)
    with pytest.raises(InvalidItem, match=reason):
        uri_script_args(uri, "1")


@pytest.mark.parametrize(
    ("item_id", "reason"),
    [
        ("", "id is empty"),
        ("a b", "space"),
        ("tab\t", "control"),
        ("x" * 201, "longer than 200"),
        ("\udcff", "not valid UTF-8"),
        (42, "must be a string"),
    ],
)
def test_refused_ids(item_id: object, reason: str) -> None:
    with pytest.raises(InvalidItem, match=reason):
        NewItem("/v.mp4", id=item_id)  # type: ignore[arg-type]


def test_priorities() -> None:
    assert NewItem("/v", priority="low").priority == 0
    assert NewItem("/v", priority="normal").priority == 5
    assert NewItem("/v", priority="high").priority == 9
    assert NewItem("/v", priority=7).priority == 7
    for bad in (-1, 10, "urgent", True, 2.5, None, float("nan")):
        with pytest.raises(InvalidItem, match="unknown priority"):
            NewItem("/v", priority=bad)  # type: ignore[arg-type]


def test_optional_fields_are_checked() -> None:
    with pytest.raises(InvalidItem, match="size"):
        NewItem("/v", size=-1)
    with pytest.raises(InvalidItem, match="etag"):
        NewItem("/v", etag="")
    with pytest.raises(InvalidItem, match="meta values"):
        NewItem("/v", meta={"nested": {"a": 1}})
    with pytest.raises(InvalidItem, match="meta is longer"):
        NewItem("/v", meta={"k": "x" * 600})


def test_default_id_is_stable_and_versioned() -> None:
    assert default_id("s3://b/k.mp4", "1") == default_id("s3://b/k.mp4", "1")
    assert default_id("s3://b/k.mp4", "1") != default_id("s3://b/k.mp4", "2")
    assert len(default_id("/v", "1")) == 24
    assert NewItem("/v").resolved_id("1") == default_id("/v", "1")
    assert NewItem("/v", id="mine").resolved_id("1") == "mine"


def test_inbox_entry_parsing() -> None:
    item = parse_inbox_entry(b'{"uri": "/v/a.mp4", "id": "a", "priority": "high", "size": 10}')
    assert (item.uri, item.id, item.priority, item.size) == ("/v/a.mp4", "a", 9, 10)
    assert parse_inbox_entry(b'{"uri": "/v/a.mp4", "priority": null, "meta": []}').priority == 5
    for raw, reason in [
        (b"{", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b"\xff", "UTF-8"),
        (b'{"uri": "/v", "x": 1}', "unknown field x"),
        (b"{}", "uri is required"),
        (b" " * 4097, "longer than 4096"),
    ]:
        with pytest.raises(InvalidItem, match=reason):
            parse_inbox_entry(raw)


@given(
    st.one_of(
        st.text(max_size=60),
        st.text(max_size=60).map(lambda s: "/" + s),
        st.text(max_size=60).map(lambda s: "s3://" + s),
        st.text(max_size=60).map(lambda s: "https://" + s),
        st.text(max_size=60).map(lambda s: "file:///" + s),
        st.text(min_size=250, max_size=1100).map(lambda s: "/" + s),
    )
)
def test_the_fast_uri_path_agrees_with_the_full_rules(uri: str) -> None:
    try:
        NewItem(uri)
    except InvalidItem:
        with pytest.raises(InvalidItem):
            uri_script_args(uri, "1")
    else:
        assert uri_script_args(uri, "1") == NewItem(uri).script_args("1")
