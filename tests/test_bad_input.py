"""Bad input against a real ``embedloom serve``: every case gets a 4xx with a JSON body
that names the problem, never a 5xx, a hang or a leaked path. Also the body limits,
slow clients and API keys, on a second server started with small limits and keys.

The malformed-JSON, wrong-type, null, number, encoding_format and dimensions cases
are in ``test_server_api.ERROR_CASES``; this module has the rest by name.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import GUARDED_BODY_LIMIT, GUARDED_KEYS, ServerProcess

pytestmark = pytest.mark.model

KEYS = GUARDED_KEYS
BODY_LIMIT = GUARDED_BODY_LIMIT


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_clean_error(reply: httpx.Response, status: int) -> dict[str, Any]:
    """The documented shape for the route, and nothing of the server's insides."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    if reply.request.url.path.startswith("/v1/"):
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        message = body["error"]["message"]
    else:
        assert set(body) == {"error", "error_type"}
        message = body["error"]
    for leak in ("Traceback", "site-packages", ".py", "/root", "/home", "/tmp", ".cache"):
        assert leak not in reply.text
    assert isinstance(message, str)
    assert message
    return dict(body)


def embeds(reply: httpx.Response, count: int) -> None:
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["data"]) == count


def test_nul_characters_are_embedded(client: httpx.Client) -> None:
    embeds(client.post("/v1/embeddings", json={"input": ["a\x00b", "\x00"]}), 2)


def test_control_characters_only_are_embedded(client: httpx.Client) -> None:
    embeds(client.post("/v1/embeddings", json={"input": ["\x01\x02\x1f\x7f", "\t\n\r", " "]}), 3)


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": "\\ud800"}',  # a lone high surrogate, escaped
        b'{"input": ["fine", "\\udc80 low"]}',  # a lone low surrogate
        b'{"input": "\xff\xfe"}',  # bytes that are not UTF-8
        '{"input": "\udc80"}'.encode("utf-8", "surrogatepass"),  # an encoded surrogate
    ],
    ids=["escaped-high", "escaped-low", "invalid-utf8", "encoded-surrogate"],
)
def test_lone_surrogates_and_invalid_utf8_are_422(client: httpx.Client, body: bytes) -> None:
    reply = client.post(
        "/v1/embeddings", content=body, headers={"content-type": "application/json"}
    )
    error = assert_clean_error(reply, 422)["error"]
    assert "not valid JSON" in error["message"]


def test_a_one_megabyte_string_is_refused_or_truncated(client: httpx.Client) -> None:
    huge = "word " * 200_000  # 1 MB
    refused = client.post("/embed", json={"inputs": huge, "truncate": False})
    assert "longer than the model's maximum" in assert_clean_error(refused, 413)["error"]
    for route, body in (("/embed", {"inputs": huge}), ("/v1/embeddings", {"input": huge})):
        truncated = client.post(route, json=body)  # cut by default
        assert truncated.status_code == 200


def test_ten_thousand_inputs_are_413(client: httpx.Client) -> None:
    reply = client.post("/v1/embeddings", json={"input": ["x"] * 10_000})
    assert "10000 inputs" in assert_clean_error(reply, 413)["error"]["message"]


@pytest.mark.parametrize(
    "value", [[["nested"]], [["a", "b"], "c"], {"text": "x"}, [None], True, [1.5]]
)
def test_wrong_shapes_are_422(client: httpx.Client, value: object) -> None:
    assert_clean_error(client.post("/v1/embeddings", json={"input": value}), 422)
    assert_clean_error(client.post("/embed", json={"inputs": value}), 422)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "application/xml"]
)
def test_a_body_that_is_not_json_by_its_content_type_is_415(
    client: httpx.Client, content_type: str
) -> None:
    reply = client.post(
        "/v1/embeddings", content=b'{"input": "x"}', headers={"content-type": content_type}
    )
    assert "must be JSON" in assert_clean_error(reply, 415)["error"]["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "application/x-www-form-urlencoded",
    ],
)
def test_json_content_types_and_curls_default_are_read(
    client: httpx.Client, content_type: str
) -> None:
    reply = client.post(
        "/v1/embeddings", content=b'{"input": "x"}', headers={"content-type": content_type}
    )
    embeds(reply, 1)


def test_health_stays_open_and_answers_fast_under_bad_input(client: httpx.Client) -> None:
    for _ in range(20):
        client.post("/v1/embeddings", content=b"{", headers={"content-type": "application/json"})
    assert client.get("/health").json() == {"status": "ok"}


# -- body limits and slow clients (the guarded server) -----------------------------------


def authorised(key: str = KEYS[0]) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def raw_exchange(url: str, head: bytes, body: bytes = b"") -> bytes:
    """Send a request head (and some body) on a plain socket; the whole answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _head(path: str, length: int, key: str = KEYS[0]) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(guarded: ServerProcess) -> None:
    # Only the head is sent: the answer must come without waiting for 10 MB.
    answer = raw_exchange(guarded.url, _head("/v1/embeddings", 10_000_000))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert "too large: 10000000 bytes" in body["error"]["message"]
    assert f"limit is {BODY_LIMIT} bytes" in body["error"]["message"]


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(guarded: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"input": "'
        for _ in range(100):  # 100 × 4 KB: well past the 64 KB limit
            yield b"a" * 4096

    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        reply = client.post(
            "/embed", content=chunks(), headers={**authorised(), "content-type": "application/json"}
        )
        assert "too large" in assert_clean_error(reply, 413)["error"]
        assert client.get("/health").status_code == 200


def test_a_body_just_under_the_limit_is_served(guarded: ServerProcess) -> None:
    texts = [f"short text number {i}" for i in range(200)]
    body = json.dumps({"input": texts}).encode()
    assert len(body) < BODY_LIMIT
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        reply = client.post(
            "/v1/embeddings",
            content=body,
            headers={**authorised(), "content-type": "application/json"},
        )
    embeds(reply, 200)


def test_a_client_that_stops_sending_its_body_gets_408_and_others_are_served(
    guarded: ServerProcess,
) -> None:
    parts = urlsplit(guarded.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as slow:
        slow.sendall(_head("/embed", 100) + b'{"inputs": ')  # 11 of 100 bytes, then silence
        with httpx.Client(base_url=guarded.url, timeout=30) as client:
            reply = client.post("/embed", json={"inputs": "meanwhile"}, headers=authorised())
            assert reply.status_code == 200
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert "did not arrive within 1s" in body["error"]


# -- API keys ------------------------------------------------------------------------------

ROUTES = [
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("POST", "/embed", {"inputs": "x"}),
    ("POST", "/embed_stream", {"inputs": ["x"]}),
    ("GET", "/info", None),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_every_route_but_health_and_docs_needs_a_right_key(
    guarded: ServerProcess, method: str, path: str, body: object
) -> None:
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        for headers in (
            {},
            authorised("wrong-key"),
            authorised(KEYS[0] + "x"),
            {"authorization": KEYS[0]},  # no scheme
            {"authorization": f"Basic {KEYS[0]}"},
        ):
            refused = client.request(method, path, json=body, headers=headers)
            error = assert_clean_error(refused, 401)
            assert refused.headers["www-authenticate"] == "Bearer"
            if path.startswith("/v1/"):
                assert error["error"]["type"] == "invalid_request_error"
                assert "API key" in error["error"]["message"]
            else:
                assert error["error_type"] == "unauthorized"
            assert KEYS[0] not in refused.text
        for key in KEYS:
            served = client.request(method, path, json=body, headers=authorised(key))
            assert served.status_code == 200, served.text


def test_health_and_the_api_description_need_no_key(guarded: ServerProcess) -> None:
    """Probes, and the page that describes the API (a browser cannot send a bearer
    header to open it): the schema declares the bearer scheme, so the page's
    "Authorize" button sends the key with every request tried from it."""
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert "swagger-ui" in client.get("/docs").text
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"] == {
            "apiKey": {"type": "http", "scheme": "bearer"}
        }
        assert schema["security"] == [{"apiKey": []}]
        # The description opens nothing else: a path that only looks like the assets'.
        assert client.get("/docs/assetsx").status_code == 401


def test_keys_never_reach_the_log(guarded: ServerProcess) -> None:
    log = json.dumps(guarded.log_entries())
    assert KEYS[0] not in log
    assert KEYS[1] not in log
