"""One typed settings object for the whole runtime.

Every field is also a command-line flag (``max_batch_tokens`` → ``--max-batch-tokens``)
and an environment variable (``EMBEDLOOM_MAX_BATCH_TOKENS``). The CLI builds its
flags from this class, and this module is the only place that reads
``EMBEDLOOM_*`` variables; everything else receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

__all__ = ["ENV_PREFIX", "PER_MODEL_SETTINGS", "ModelSpec", "Settings", "SettingsError"]

ENV_PREFIX = "EMBEDLOOM_"
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
DEFAULT_MODEL = "all-MiniLM-L6-v2"

LogFormat = Literal["text", "json"]
Sharing = Literal["auto", "dedicated", "replicas", "locked"]
BackendName = Literal["auto", "torch", "onnx", "openvino"]
DType = Literal["auto", "fp32", "bf16", "fp16", "int8"]
LogLevel = Literal["debug", "info", "warning", "error"]
Tracing = Literal["off", "console", "otlp"]
AdmissionPolicy = Literal["wait", "count"]
Scheduling = Literal["fair", "fifo"]


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the setting."""


# After SettingsError, which it raises.
from embedloom.model_spec import PER_MODEL_SETTINGS, ModelSpec  # noqa: E402


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of the engine and the server; validated on creation."""

    host: str = dataclasses.field(
        default="127.0.0.1", metadata={"help": "address the HTTP server binds"}
    )
    port: int = dataclasses.field(default=8080, metadata={"help": "TCP port of the HTTP server"})
    model: tuple[str, ...] = dataclasses.field(
        default=(DEFAULT_MODEL,),
        metadata={
            "help": "the model to serve: the packaged default, a local sentence-transformers "
            "directory, or a Hugging Face repo id (org/name[@revision]), fetched once into "
            "the store; NAME=REF serves it as NAME; repeat for several models, the first is "
            "the default",
            "default_text": DEFAULT_MODEL,
        },
    )
    home: str = dataclasses.field(
        default="",
        metadata={
            "help": "where the model store lives",
            "default_text": "~/.cache/embedloom",
        },
    )
    offline: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "never contact the Hugging Face hub: only the store and local paths "
            "(also on when HF_HUB_OFFLINE=1)"
        },
    )
    workers: int = dataclasses.field(
        default=1,
        metadata={
            "help": "worker processes, under gunicorn; the thread budget is divided between them"
        },
    )
    preload: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "with --workers: load the model once in the master before forking, "
            "so workers share its weights copy-on-write"
        },
    )
    backend: BackendName = dataclasses.field(
        default="auto",
        metadata={
            "help": "what runs the model: torch, onnx (ONNX Runtime, exported once per "
            "machine into the store), openvino (OpenVINO, converted once per machine) or "
            "auto (the fastest variant that passes the accuracy gate here, found by a "
            "short trial at first use; `embedloom variants` shows it)"
        },
    )
    dtype: DType = dataclasses.field(
        default="auto",
        metadata={
            "help": "arithmetic: fp32, bf16 (CPUs with AVX512-BF16/AMX, GPUs), fp16 (GPUs), "
            "int8 (onnx, openvino) or auto; anything but fp32 must pass the accuracy gate against "
            "fp32 torch on the shipped calibration set"
        },
    )
    max_batch_tokens: int = dataclasses.field(
        default=8192,
        metadata={"help": "token budget of one batch: padded length × batch size"},
    )
    max_batch_size: int = dataclasses.field(
        default=32, metadata={"help": "most inputs in one model batch"}
    )
    max_client_batch_size: int = dataclasses.field(
        default=2048,
        metadata={
            "help": "most inputs one HTTP request may carry (OpenAI's limit; at most "
            "max_queued_inputs)"
        },
    )
    max_queued_inputs: int = dataclasses.field(
        default=2048,
        metadata={
            "help": "admission bound: inputs admitted (queued + running); "
            "past it requests fail fast with 429"
        },
    )
    admission: AdmissionPolicy = dataclasses.field(
        default="wait",
        metadata={
            "help": "how requests are admitted: wait (only if the work that would run before "
            "it drains within --max-queue-wait, by the measured drain rate; "
            "--max-queued-inputs stays a memory bound) or count (by --max-queued-inputs only)"
        },
    )
    max_queue_wait: float = dataclasses.field(
        default=0.5,
        metadata={
            "help": "with --admission wait: the most seconds of queued work a request is "
            "admitted behind (its own work is not counted); past it, 429 at once with "
            "Retry-After"
        },
    )
    scheduling: Scheduling = dataclasses.field(
        default="fair",
        metadata={
            "help": "the order queued inputs run in: fair (weighted fair shares between "
            "tenants, then between requests, so short requests do not wait behind long "
            "ones) or fifo (arrival order)"
        },
    )
    batch_overhead_tokens: int = dataclasses.field(
        default=64,
        metadata={
            "help": "fixed cost of one model call, in token-equivalents; the batcher "
            "weighs it against padding when grouping inputs by length"
        },
    )
    request_timeout: float = dataclasses.field(
        default=60.0,
        metadata={
            "help": "seconds a request may take when it sends no X-Request-Timeout header "
            "(0: no limit; streams have none unless they send the header)"
        },
    )
    max_request_timeout: float = dataclasses.field(
        default=600.0,
        metadata={"help": "the most seconds X-Request-Timeout may ask for (larger is capped)"},
    )
    inference_timeout: float = dataclasses.field(
        default=60.0,
        metadata={
            "help": "seconds one batch may run before its inference thread is declared hung: "
            "the engine reports unhealthy, fails queued requests and replaces the thread "
            "and its model (0: only dead threads are replaced)"
        },
    )
    max_stream_inputs: int = dataclasses.field(
        default=100_000,
        metadata={"help": "most inputs one POST /embed_stream request may carry"},
    )
    sharing: Sharing = dataclasses.field(
        default="auto",
        metadata={
            "help": "how the model is shared: dedicated (one inference thread), replicas "
            "(one model per inference thread), locked (one model behind a lock, no "
            "batching), or auto (dedicated on a GPU, replicas on CPU)"
        },
    )
    replicas: int = dataclasses.field(
        default=0,
        metadata={"help": "model replicas for --sharing replicas (0: chosen from the budget)"},
    )
    threads: int = dataclasses.field(
        default=0,
        metadata={
            "help": "thread budget: compute threads for the model(s) in all "
            "(0: the cores this process may use, after affinity and cgroup limits)"
        },
    )
    auto_truncate: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "cut over-long inputs to the model's maximum (from the right, keeping "
            "any prompt) when a request does not say; --no-auto-truncate refuses them "
            "with 413 instead (TEI's 'truncate' and Cohere's 'truncate' ask per request)"
        },
    )
    default_prompt_name: str = dataclasses.field(
        default="",
        metadata={
            "help": "the prompt (by name, from the model's config_sentence_transformers.json) "
            "put before inputs of a request that names none (default: the model's own "
            "default_prompt_name)"
        },
    )
    default_prompt: str = dataclasses.field(
        default="",
        metadata={
            "help": "a prompt text put before inputs of a request that names none "
            "(instead of --default-prompt-name)"
        },
    )
    log_level: LogLevel = dataclasses.field(default="info", metadata={"help": "log verbosity"})
    log_format: LogFormat = dataclasses.field(
        default="text", metadata={"help": "text lines, or one JSON object per line"}
    )
    tracing: Tracing = dataclasses.field(
        default="off",
        metadata={
            "help": "OpenTelemetry spans per request, stage and batch: off, console, or otlp "
            "(OTEL_EXPORTER_OTLP_* variables; needs the 'tracing' extra)"
        },
    )
    api_key: tuple[str, ...] = dataclasses.field(
        default=(),
        repr=False,
        metadata={
            "help": "require 'Authorization: Bearer KEY' on every route but /health; "
            "repeat the flag for several keys (env: comma-separated)"
        },
    )
    api_key_file: str = dataclasses.field(
        default="",
        metadata={
            "help": "a file of API keys, one per line: KEY, or NAME WEIGHT KEY to name a "
            "tenant and its weight in fair shares (with --api-key too)"
        },
    )
    public_status: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "with API keys: let anyone who can reach the server see the status "
            "page's figures (GET /status) without a key; the model routes still need one"
        },
    )
    tenant_header: str = dataclasses.field(
        default="",
        metadata={
            "help": "a header naming the tenant, set by a trusted proxy in front (honoured "
            "only when given); without it the tenant is the API key's name"
        },
    )
    max_body_bytes: int = dataclasses.field(
        default=8 * 1024 * 1024,
        metadata={"help": "largest request body; larger ones get 413 before they are read"},
    )
    body_timeout: float = dataclasses.field(
        default=30.0,
        metadata={"help": "seconds a client may take to send its whole request body (408)"},
    )
    max_connections: int = dataclasses.field(
        default=1024,
        metadata={"help": "open connections per process; past it uvicorn answers 503 at once"},
    )
    graceful_shutdown_seconds: float = dataclasses.field(
        default=30.0,
        metadata={"help": "on SIGTERM, how long admitted requests may take to finish"},
    )
    keep_alive: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "seconds a model may sit idle before it is unloaded, to be loaded "
            "again by the next request for it (0: never unloaded)"
        },
    )
    max_loaded_models: int = dataclasses.field(
        default=0,
        metadata={
            "help": "most models loaded at once per process; loading one more unloads the "
            "least recently used idle one (0: no limit)"
        },
    )
    catch_all: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "answer a request naming a model not served here with the default model "
            "(for clients with a hard-coded name, such as text-embedding-ada-002) instead "
            "of 404"
        },
    )
    # The config file's [models.NAME] tables: (name, ((setting, value), ...)), with
    # "aliases" among the settings. Not a flag: per-model values come from the file.
    model_settings: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = dataclasses.field(
        default=(), metadata={"flag": False, "help": ""}
    )

    def __post_init__(self) -> None:
        # Settings(model="x"): one model; flags and variables give lists.
        object.__setattr__(self, "model", _model_texts(self.model))
        self._check_models()
        for name in (
            "max_batch_tokens",
            "max_batch_size",
            "max_client_batch_size",
            "max_queued_inputs",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 1:
            raise SettingsError(f"workers must be at least 1, got {self.workers}")
        # Flags and variables are checked as they are parsed; this catches a bad
        # value given to the constructor, for every field with a fixed set of values.
        for name, choices in _fields_with_choices():
            if (value := getattr(self, name)) not in choices:
                allowed = ", ".join(choices)
                raise SettingsError(f"{name} must be one of {allowed}, got {value!r}")
        if self.replicas < 0 or self.threads < 0:
            raise SettingsError("replicas and threads must not be negative (0 means automatic)")
        if self.batch_overhead_tokens < 0:
            raise SettingsError("batch_overhead_tokens must not be negative")
        if not self.max_queue_wait > 0:
            raise SettingsError(f"max_queue_wait must be positive, got {self.max_queue_wait}")
        if self.tenant_header and not _HEADER_NAME.fullmatch(self.tenant_header):
            raise SettingsError(f"tenant_header: {self.tenant_header!r} is not an HTTP header name")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_client_batch_size > self.max_queued_inputs:
            # A request larger than the admission bound could never be admitted, so
            # lowering the bound lowers the request limit with it.
            object.__setattr__(self, "max_client_batch_size", self.max_queued_inputs)
        if self.request_timeout < 0 or self.max_request_timeout <= 0:
            raise SettingsError(
                "request_timeout must not be negative and max_request_timeout must be positive"
            )
        if self.inference_timeout < 0:
            raise SettingsError("inference_timeout must not be negative (0: no limit)")
        if self.max_stream_inputs < 1:
            raise SettingsError(
                f"max_stream_inputs must be at least 1, got {self.max_stream_inputs}"
            )
        # Flags and environment give lists; keep the frozen object hashable.
        object.__setattr__(self, "api_key", tuple(self.api_key))
        if any(not key or key != key.strip() for key in self.api_key):
            raise SettingsError("api_key: keys must be non-empty, without surrounding spaces")
        if self.max_body_bytes < 1 or self.max_connections < 1:
            raise SettingsError("max_body_bytes and max_connections must be at least 1")
        if self.body_timeout < 0:
            raise SettingsError("body_timeout must not be negative (0: no limit)")
        if self.graceful_shutdown_seconds < 0:
            raise SettingsError("graceful_shutdown_seconds must not be negative")
        if self.keep_alive < 0 or self.max_loaded_models < 0:
            raise SettingsError(
                "keep_alive and max_loaded_models must not be negative (0: no limit)"
            )

    def _check_models(self) -> None:
        if not self.model:
            raise SettingsError("model: at least one model must be served")
        specs = [ModelSpec.parse(text) for text in self.model]
        served = [spec.name for spec in specs]
        if len(set(served)) < len(served):
            twice = sorted({name for name in served if served.count(name) > 1})
            raise SettingsError(
                f"model: the name {', '.join(twice)} is given to two models; "
                "name them apart with NAME=REF"
            )
        for name, values in self.model_settings:
            if name not in served:
                raise SettingsError(
                    f"models.{name}: no such model is served (served: {', '.join(served)})"
                )
            for key, value in values:
                if key == "aliases":
                    if not isinstance(value, tuple) or not all(
                        isinstance(alias, str) and alias for alias in value
                    ):
                        raise SettingsError(f"models.{name}.aliases: expected a list of names")
                elif key not in PER_MODEL_SETTINGS:
                    raise SettingsError(
                        f"models.{name}.{key}: not a per-model setting (those are "
                        f"{', '.join(PER_MODEL_SETTINGS)}, aliases and model)"
                    )

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """The served models, the default first."""
        per_model = dict(self.model_settings)
        specs = []
        for text in self.model:
            spec = ModelSpec.parse(text)
            values = dict(per_model.get(spec.name, ()))
            aliases = tuple(values.pop("aliases", ()))
            specs.append(ModelSpec(spec.name, spec.ref, aliases, tuple(values.items())))
        return tuple(specs)

    @property
    def model_ref(self) -> str:
        """What the default model was given as: one engine's model."""
        return self.models[0].ref

    def for_model(self, name: str) -> Settings:
        """The settings of the engine serving model ``name``: the server's, with the
        model's own values on top and that model alone."""
        for spec in self.models:
            if spec.name == name:
                return dataclasses.replace(
                    self, model=(spec.ref,), model_settings=(), **dict(spec.overrides)
                )
        raise SettingsError(f"model: {name!r} is not served (served: {self.model_names()})")

    def model_names(self) -> str:
        return ", ".join(spec.name for spec in self.models)

    @classmethod
    def from_environment(cls) -> Settings:
        """Defaults, overridden by this process's ``EMBEDLOOM_*`` variables: what the
        library's entry points use when given no ``Settings``."""
        return cls.from_env(os.environ)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from ``EMBEDLOOM_*`` variables, then ``overrides`` on top."""
        values = cls._values_from_env(environ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @staticmethod
    def _values_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for spec in setting_specs():
            raw = environ.get(spec.env_var)
            if raw is not None:
                values[spec.name] = spec.parse(raw)
        if "offline" not in values and _is_true(environ.get("HF_HUB_OFFLINE", "")):
            # The hub library's own switch means the same thing here.
            values["offline"] = True
        return values

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from a TOML config file (``config_file``), then the ``EMBEDLOOM_*``
        variables of ``environ`` (default: this process's), then ``overrides``."""
        from embedloom.config_file import read_config_file

        values = read_config_file(path)
        given = cls._values_from_env(os.environ if environ is None else environ)
        given.update({k: v for k, v in overrides.items() if v is not None})
        if "model" in given:
            # Models named elsewhere replace the file's. A bare name of one of the
            # file's models means that model, as the file defines it.
            in_file = {
                spec.name: spec.ref for spec in map(ModelSpec.parse, values.pop("model", ()))
            }
            given["model"] = tuple(
                f"{text}={in_file[text]}" if "=" not in text and text in in_file else text
                for text in _model_texts(given["model"])
            )
            served = {ModelSpec.parse(text).name for text in given["model"]}
            values["model_settings"] = tuple(
                (name, own) for name, own in values.get("model_settings", ()) if name in served
            )
        return cls(**(values | given))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _model_texts(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _is_true(raw: str) -> bool:
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """How one field of ``Settings`` appears on the command line and in the environment."""

    name: str
    kind: type
    choices: tuple[str, ...] | None
    default: Any
    help: str
    # The default as --help shows it: an empty string means something ("the
    # store's usual place", "no file") that the field's metadata may name.
    default_text: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: str) -> Any:
        """Convert a flag or environment string; raise ``SettingsError`` naming the setting."""
        text = raw.strip()
        if self.kind is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if self.kind is bool:
            lowered = text.lower()
            if _is_true(lowered):
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise SettingsError(f"{self.env_var}: expected true or false, got {raw!r}")
        if self.choices is not None:
            lowered = text.lower()
            if lowered not in self.choices:
                raise SettingsError(
                    f"{self.env_var}: expected one of {', '.join(self.choices)}, got {raw!r}"
                )
            return lowered
        try:
            return self.kind(text)
        except ValueError as exc:
            raise SettingsError(
                f"{self.env_var}: expected {self.kind.__name__}, got {raw!r}"
            ) from exc


@functools.cache
def _fields_with_choices() -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((spec.name, spec.choices) for spec in setting_specs() if spec.choices)


def setting_specs() -> list[SettingSpec]:
    """One spec per field of ``Settings``, in declaration order."""
    hints = typing.get_type_hints(Settings)
    specs = []
    for f in dataclasses.fields(Settings):
        if f.metadata.get("flag", True) is False:
            continue
        hint = hints[f.name]
        choices: tuple[str, ...] | None = None
        kind: type
        if get_origin(hint) is Literal:
            choices = tuple(str(a) for a in get_args(hint))
            kind = str
        elif get_origin(hint) is tuple:
            kind = tuple  # of strings: a repeatable flag, a comma-separated variable
        else:
            kind = hint
        shown = f.metadata.get("default_text", "none" if f.default == "" else str(f.default))
        specs.append(SettingSpec(f.name, kind, choices, f.default, str(f.metadata["help"]), shown))
    return specs
