"""The one exception hierarchy of embedloom.

Domain errors only: nothing here knows about HTTP. The server maps each class
to a status code in exactly one table (``embedloom.server.errors``).

    EmbedloomError
     ├── InvalidInput          the caller asked for something malformed
     │    ├── InputTooLong     an input has more tokens than the model takes, truncation off
     │    └── TooManyInputs    more inputs in one call than the configured limit
     ├── NotThisTask           a route asks a model for a task it cannot do (rerank of an embedder)
     ├── ModelNotFound         a model reference that resolves to nothing (lists where it looked)
     ├── Overloaded            admission refused: the engine is full; carries ``retry_after``
     ├── Unavailable           the engine is not serving: not started, draining, closed
     │    └── ModelLoading     the model asked for is loading; carries ``retry_after``
     ├── AddressUnavailable    the server cannot listen where it was asked to
     └── BackendError          the model failed while running a batch

Lower-layer errors are wrapped with ``raise X(...) from exc`` so the cause
survives for logs while the message stays ours.
"""

from __future__ import annotations

__all__ = [
    "AddressUnavailable",
    "BackendError",
    "DeadlineExceeded",
    "EmbedloomError",
    "InputTooLong",
    "InvalidInput",
    "ModelFetchFailed",
    "ModelLoading",
    "ModelNotFound",
    "NotThisTask",
    "Overloaded",
    "TooManyInputs",
    "Unavailable",
]


class EmbedloomError(Exception):
    """Base class of every error embedloom raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EmbedloomError):
    """The request is malformed; ``param`` names the offending field when known."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InputTooLong(InvalidInput):
    """An input exceeds the model's maximum length and truncation was not allowed."""

    def __init__(self, *, index: int, max_tokens: int) -> None:
        super().__init__(
            f"input {index} is longer than the model's maximum of {max_tokens} tokens; "
            "shorten it or allow truncation",
            param="input",
        )
        self.index = index
        self.max_tokens = max_tokens


class TooManyInputs(InvalidInput):
    """One call carries more inputs than the configured limit."""

    def __init__(self, *, count: int, limit: int) -> None:
        super().__init__(
            f"{count} inputs in one request, more than the limit of {limit}; split the request",
            param="input",
        )
        self.count = count
        self.limit = limit


class ModelNotFound(EmbedloomError):
    """A model reference that resolves to nothing; ``searched`` lists every place looked."""

    def __init__(
        self, reference: str, searched: tuple[str, ...] = (), *, message: str | None = None
    ) -> None:
        where = "; ".join(searched) if searched else "nowhere"
        super().__init__(message or f"model {reference!r} not found (looked in: {where})")
        self.reference = reference
        self.searched = searched


class ModelFetchFailed(EmbedloomError):
    """The hub could not be reached or sent something other than what it listed."""

    def __init__(self, repo_id: str, endpoint: str, reason: str) -> None:
        super().__init__(
            f"could not fetch {repo_id!r} from {endpoint}: {reason} "
            "(nothing was stored; the next start tries again)"
        )
        self.repo_id = repo_id


class Overloaded(EmbedloomError):
    """Admission refused because the engine already holds as much work as it may."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotThisTask(EmbedloomError):
    """A route asked a model for a task it cannot do (``/rerank`` of an embedding model)."""


class Unavailable(EmbedloomError):
    """The engine is not accepting work: starting, draining, closed or unhealthy."""


class ModelLoading(Unavailable):
    """The model asked for is being loaded and was not ready within the request's
    deadline; carries ``retry_after``."""

    def __init__(self, model: str, *, retry_after: float) -> None:
        super().__init__(f"model {model!r} is loading; retry shortly")
        self.model = model
        self.retry_after = retry_after


class AddressUnavailable(EmbedloomError):
    """The server cannot listen on the address asked for (in use, not ours, privileged)."""


class DeadlineExceeded(EmbedloomError):
    """The request's deadline passed before its inputs ran; they were dropped unrun."""


class BackendError(EmbedloomError):
    """The model raised while running a batch."""
