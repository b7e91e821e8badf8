"""The three dialects ``bench`` speaks: what a request's body is, where it goes, and
how many tokens the server says it embedded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from embedloom.errors import InvalidInput

if TYPE_CHECKING:
    from embedloom.bench.http import Endpoint

__all__ = ["API_NAMES", "Api", "ApiName", "detect_api"]

ApiName = Literal["openai", "tei", "cohere"]
API_NAMES: tuple[ApiName, ...] = ("openai", "tei", "cohere")
_PATHS: dict[ApiName, str] = {"openai": "/v1/embeddings", "tei": "/embed", "cohere": "/v2/embed"}
# Read from the end of a body with a regular expression, not by parsing the whole
# answer: the vectors are most of it, and parsing them would cost the client the
# CPU it must leave to the server.
_TOKEN_FIELDS: dict[ApiName, re.Pattern[bytes]] = {
    "openai": re.compile(rb'"prompt_tokens"\s*:\s*(\d+)'),
    "cohere": re.compile(rb'"input_tokens"\s*:\s*(\d+)'),
}


@dataclass(frozen=True, slots=True)
class Api:
    name: ApiName
    path: str
    model: str | None = None

    def body(self, texts: list[str]) -> bytes:
        if self.name == "tei":
            return orjson.dumps({"inputs": texts})
        if self.name == "openai":
            body: dict[str, object] = {"input": texts}
            if self.model:
                body["model"] = self.model
            return orjson.dumps(body)
        return orjson.dumps(
            {
                "texts": texts,
                "model": self.model or "default",
                "input_type": "search_document",
                "embedding_types": ["float"],
            }
        )

    def tokens(self, body: bytes, headers: dict[str, str]) -> int | None:
        """The tokens the server reports having embedded (None: it does not say)."""
        if self.name == "tei":
            value = headers.get("x-compute-tokens")
            return int(value) if value and value.isdigit() else None
        match = _TOKEN_FIELDS[self.name].search(body, max(0, len(body) - 400))
        return int(match.group(1)) if match else None


def _from_path(path: str) -> ApiName | None:
    path = path.rstrip("/")
    if path.endswith("/v2/embed"):
        return "cohere"
    if path.endswith("/embeddings"):
        return "openai"
    if path.endswith("/embed"):
        return "tei"
    return None


async def detect_api(
    endpoint: Endpoint, asked: str, model: str | None, headers: dict[str, str]
) -> Api:
    """The dialect to send in: ``asked`` (openai, tei, cohere), or for ``auto`` the
    URL's path, else the routes the server's ``/openapi.json`` lists (OpenAI's first),
    else TEI's ``/info``."""
    from embedloom.bench.http import Connection

    path = endpoint.path.rstrip("/")
    if asked != "auto":
        name: ApiName = asked  # type: ignore[assignment]
        return Api(name, path or _PATHS[name], model)
    if path:
        found = _from_path(path)
        if found is None:
            raise InvalidInput(
                f"cannot tell the API of {endpoint.base()}{path}: pass --api "
                "openai|tei|cohere, or the server's root URL"
            )
        return Api(found, path, model)
    connection = Connection(endpoint, headers)
    try:
        routes: set[str] = set()
        try:
            answer = await connection.request("GET", "/openapi.json")
            if answer.status == 200:
                routes = set(orjson.loads(answer.body).get("paths", {}))
            if not routes and (await connection.request("GET", "/info")).status == 200:
                routes = {"/embed"}
        except (ConnectionError, orjson.JSONDecodeError) as exc:
            raise InvalidInput(f"cannot reach {endpoint.base()}: {exc}") from exc
    finally:
        await connection.close()
    for name in API_NAMES:
        if _PATHS[name] in routes:
            return Api(name, _PATHS[name], model)
    raise InvalidInput(
        f"{endpoint.base()} lists none of /v1/embeddings, /embed, /v2/embed: pass "
        "--api openai|tei|cohere and the URL with its path"
    )
