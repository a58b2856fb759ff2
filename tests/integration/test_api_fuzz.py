"""A property-based fuzz of the HTTP API from its own schema (schemathesis): the real app on
uvicorn on a loopback port, over the embedded Redis, every operation called with what the
schema allows and what it does not. No input may make a server error, each answer is one
the schema documents, in the shape it documents, and without a token every operation
answers 401 (issue 14).

schemathesis makes one test an operation when the module is collected, so the schema is
read then, from an app that serves nothing; the served app's /openapi.json is checked to be
the same. Bounded and repeatable: derandomized (the same cases every run), a few examples an
operation. The queue is a throwaway one, so pausing it or purging its dead letters harms
nothing; nothing is connected to beyond loopback (the API checks a URL's address at enqueue
and fetches nothing) and no name is looked up outside this machine.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from redis import Redis

from framefleet.ops.api import create_app
from framefleet.queue import EmbeddedServer, Queue, Supervision, connect
from framefleet.settings import QueueSettings, Settings
from tests.integration.test_api import READ, WRITE, Served, _settings

EXAMPLES = 25  # an operation, in the fuzzing phase (the examples and coverage phases add theirs)
NOWHERE = Redis(unix_socket_path="/nonexistent/framefleet-schema-only")  # never called
OPENAPI = create_app(Settings(), Queue(NOWHERE, QueueSettings(name="schema"))).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI, config=schemathesis.Config())
schema.config.generation.update(max_examples=EXAMPLES, deterministic=True)
# A schema-valid request may still be refused with 409 or 422: the API checks what the schema
# cannot say (a URI's scheme and address, a priority's name, a reason with `confirm`).
schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])


def _loopback(host: Any) -> bool:
    try:
        return host in (None, "localhost") or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def offline() -> Iterator[list[str]]:
    """Connections beyond loopback are refused and noted (the API must make none), and so is
    a lookup of a name but localhost: it fails here as the resolver would for a name that
    does not exist, after the same IDNA encoding (so a made-up http://example.com is left to
    the fetch, as an unknown name is, without a query leaving the machine)."""
    tried: list[str] = []
    getaddrinfo, connect_socket = socket.getaddrinfo, socket.socket.connect

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if _loopback(host):
            return getaddrinfo(host, *args, **kwargs)
        if isinstance(host, str):
            host.encode("idna")  # UnicodeError for a label empty or too long, as getaddrinfo
        raise socket.gaierror(socket.EAI_NONAME, "no lookups beyond loopback in the fuzz")

    def connect_to(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            tried.append(f"connect {address}")
            raise OSError("the fuzz allows no connections beyond loopback")
        connect_socket(self, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", lookup)
        patch.setattr(socket.socket, "connect", connect_to)
        yield tried


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, valkey: EmbeddedServer, offline: list[str]
) -> Iterator[Served]:
    """One server for the whole fuzz, on a queue of its own, with a fresh leader report (so
    /readyz answers 200: its 503 is for a fleet without one)."""
    settings = _settings(tmp_path_factory.mktemp("fuzz"), "api-fuzz")
    client = connect(valkey.url)
    client.flushall()
    queue = Queue(client, settings.queue)
    Supervision(queue).write_health({"ok": True, "at": time.time(), "leader": "c1"}, ttl_s=600)
    with Served(settings, queue) as api:
        served_schema = httpx.get(f"{api.url}/openapi.json", headers=_token(WRITE))
        assert served_schema.json() == OPENAPI  # what is fuzzed is what is served
        yield api
    client.close()
    assert offline == [], "the API connected to something beyond loopback"


def _token(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@schema.parametrize()
def test_no_input_makes_a_server_error_or_an_undocumented_answer(
    case: schemathesis.Case[Any], served: Served
) -> None:
    case.call_and_validate(base_url=served.url, headers=_token(WRITE))


@schema.parametrize()
def test_without_a_token_every_operation_is_refused(
    case: schemathesis.Case[Any], served: Served
) -> None:
    """Whatever the method, the path or the body (malformed JSON included: FastAPI reads a
    body before a route's dependencies, so the token is checked before either)."""
    response = case.call(base_url=served.url)
    assert response.status_code == 401, (case.method, case.formatted_path, response.text)


def _post(c: httpx.Client, path: str, body: str | bytes) -> httpx.Response:
    return c.post(path, content=body, headers={"Content-Type": "application/json"})


def test_inputs_that_were_server_errors_are_refused_saying_why(served: Served) -> None:
    """Each of these was a 500: JSON's NaN and infinities and lone surrogates (which FastAPI's
    422 echoed and could not write), a body nested past Python's recursion limit, an http URL
    whose [host] does not parse or whose name has a label empty or over 63 characters."""
    with served.client() as c:
        before = c.get("/v1/queue").json()["counters"].get("enqueued_total", 0)
        for body, field in [
            ('{"uri": NaN}', "uri"),
            ('{"uri": "s3://v/a.mp4", "size": 1e400}', "size"),
            ('{"items": Infinity}', "items"),
            ('{"uri": "s3://v/a.mp4", "\\ud800": 1}', "ItemIn"),  # pydantic: not a string
        ]:
            got = _post(c, "/v1/items", body)
            assert got.status_code == 422, (body, got.text)
            assert any(field in error["loc"] for error in got.json()["detail"]), got.text
            assert all("input" not in error for error in got.json()["detail"]), got.text
        bad_class = _post(c, "/v1/dead/retry", '{"class": "\\ud800"}')
        assert bad_class.status_code == 422 and "class" in bad_class.text, bad_class.text
        not_utf8 = _post(c, "/v1/items", b'{"uri": "\xff"}')  # a 400 before too, undocumented
        assert not_utf8.status_code == 400
        for uri, says in [
            ("http://[::1/v.mp4", "Invalid IPv6 URL"),
            ("https://[cam]/v.mp4", "does not appear to be an IPv4 or IPv6 address"),
            ("http://cams..example/v.mp4", "label empty or too long"),
            (f"http://{'a' * 64}.example/v.mp4", "label empty or too long"),
        ]:
            got = c.post("/v1/items", json={"items": [{"uri": "s3://v/ok.mp4"}, {"uri": uri}]})
            assert got.status_code == 422, (uri, got.text)
            assert got.json()["detail"]["index"] == 1 and says in got.json()["detail"]["error"]
        deep = b"[" * 100_000 + b"]" * 100_000
        assert _post(c, "/v1/events/s3", deep).status_code == 400
        s3 = {"bucket": {"name": "cams"}, "object": {"key": "\ud800.mp4"}}
        event = json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": s3}]})
        surrogate = _post(c, "/v1/events/s3", event)  # json.dumps writes it "\\ud800"
        assert surrogate.status_code == 400 and "not valid UTF-8" in surrogate.text
        assert c.get("/v1/queue").json()["counters"].get("enqueued_total", 0) == before


def test_without_a_token_nothing_but_healthz_answers(served: Served) -> None:
    """The token is checked before a body is read or a path routed: malformed JSON was a 422
    and the schema was served to anyone."""
    with served.client(None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        for method, path in [
            ("GET", "/openapi.json"),
            ("GET", "/metrics"),
            ("GET", "/nowhere"),
            ("OPTIONS", "/v1/items"),
            ("DELETE", "/v1/dead"),
        ]:
            got = anonymous.request(method, path)
            assert got.status_code == 401, path
            assert got.headers["WWW-Authenticate"].startswith("Bearer"), path
        for path in ("/v1/items", "/v1/dead/retry", "/v1/events/s3"):
            assert _post(anonymous, path, b"{not json").status_code == 401, path
    with served.client("not-the-token") as wrong:
        assert wrong.get("/openapi.json").status_code == 401
    with served.client(READ) as reader:
        assert reader.get("/openapi.json").status_code == 200
        assert _post(reader, "/v1/items", b"{not json").status_code == 403


def test_a_method_the_path_has_not_is_405_naming_every_method_it_has(served: Served) -> None:
    """Starlette's 405 named the methods of the first route with the path only (POST for
    /v1/items, whose GET is another route)."""
    with served.client() as c:
        for method, path, allowed in [
            ("OPTIONS", "/v1/items", {"GET", "POST"}),
            ("PUT", "/v1/items/some-id", {"DELETE", "GET"}),
            ("PATCH", "/v1/dead", {"DELETE", "GET"}),
            ("GET", "/v1/queue/pause", {"POST"}),
        ]:
            got = c.request(method, path)
            assert got.status_code == 405, (method, path, got.text)
            assert set(got.headers["Allow"].split(", ")) == allowed, (method, path)
