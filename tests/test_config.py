"""Settings: one object, fed by flags and EMBEDLOOM_* variables, validated on creation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embedloom.config import Settings, SettingsError, setting_specs


def test_defaults_bind_loopback_on_8080() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.model_ref == "all-MiniLM-L6-v2"


def test_environment_then_overrides() -> None:
    environ = {
        "EMBEDLOOM_PORT": "9000",
        "EMBEDLOOM_MAX_BATCH_TOKENS": "4096",
        "EMBEDLOOM_AUTO_TRUNCATE": "yes",
        "EMBEDLOOM_LOG_FORMAT": "JSON",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(environ, port=9100, model=None)
    assert settings.port == 9100, "an explicit flag beats the environment"
    assert settings.max_batch_tokens == 4096
    assert settings.auto_truncate is True
    assert settings.log_format == "json"
    assert settings.model_ref == "all-MiniLM-L6-v2", "None means 'not given'"


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"EMBEDLOOM_PORT": "eighty"}, "EMBEDLOOM_PORT: expected int"),
        ({"EMBEDLOOM_AUTO_TRUNCATE": "maybe"}, "expected true or false"),
        ({"EMBEDLOOM_LOG_LEVEL": "loud"}, "expected one of debug, info"),
        ({"EMBEDLOOM_MAX_BATCH_SIZE": "0"}, "max_batch_size must be at least 1"),
        ({"EMBEDLOOM_PORT": "70000"}, "port must be between"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(environ)


def test_a_smaller_admission_bound_lowers_the_request_limit() -> None:
    settings = Settings(max_queued_inputs=8)
    assert settings.max_client_batch_size == 8


def test_every_setting_has_a_flag_an_env_var_and_help() -> None:
    specs = setting_specs()
    names = {spec.name for spec in specs}
    assert {
        "host",
        "port",
        "model",
        "max_batch_tokens",
        "max_batch_size",
        "max_client_batch_size",
        "max_queued_inputs",
        "log_level",
    } <= names
    for spec in specs:
        assert spec.flag == "--" + spec.name.replace("_", "-")
        assert spec.env_var == "EMBEDLOOM_" + spec.name.upper()
        assert spec.help


def test_api_keys_repeat_as_flags_and_split_as_a_variable() -> None:
    from embedloom.cli import build_parser

    args = build_parser().parse_args(["serve", "--api-key", "k1", "--api-key", "k2"])
    assert Settings.from_env({}, api_key=args.api_key).api_key == ("k1", "k2")
    assert Settings.from_env({"EMBEDLOOM_API_KEY": "k1, k2"}).api_key == ("k1", "k2")
    assert "k1" not in repr(Settings(api_key=("k1",))), "keys stay out of reprs and logs"
    with pytest.raises(SettingsError, match="api_key"):
        Settings(api_key=("",))


def test_a_key_file_adds_keys_and_an_unreadable_one_is_refused(tmp_path: Path) -> None:
    from embedloom.server.guard import load_api_keys

    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\nfile-key\n\nsearch 3 search-key\n")
    loaded = load_api_keys(Settings(api_key=("flag-key",), api_key_file=str(keys)))
    assert [(k.tenant, k.weight, k.key) for k in loaded] == [
        ("default", 1.0, b"flag-key"),
        ("default", 1.0, b"file-key"),
        ("search", 3.0, b"search-key"),
    ]
    assert "search-key" not in repr(loaded), "a key never appears in a repr or a log"
    with pytest.raises(SettingsError, match="cannot read"):
        load_api_keys(Settings(api_key_file=str(keys) + ".missing"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a b\n", "line 1: expected KEY or NAME WEIGHT KEY"),
        ("ok 0 secret-1\n", "line 1: the weight must be a positive number"),
        ("# c\nok x secret-1\n", "line 2: the weight must be a positive number"),
        ("b@d 1 secret-1\n", "line 1: a tenant name is letters"),
        ("t 1 secret-1\nt 2 secret-2\n", "tenant t is given two weights"),
    ],
)
def test_a_bad_key_file_line_is_refused_without_quoting_the_key(
    tmp_path: Path, text: str, problem: str
) -> None:
    from embedloom.server.guard import load_api_keys

    keys = tmp_path / "keys"
    keys.write_text(text)
    with pytest.raises(SettingsError, match=problem) as refused:
        load_api_keys(Settings(api_key_file=str(keys)))
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("host", "keys", "warned"),
    [
        ("127.0.0.1", (), False),
        ("::1", (), False),
        ("localhost", (), False),
        ("0.0.0.0", (), True),
        ("192.168.1.20", (), True),
        ("0.0.0.0", ("k",), False),
    ],
)
def test_a_public_bind_without_a_key_is_warned_about(
    caplog: pytest.LogCaptureFixture, host: str, keys: tuple[str, ...], warned: bool
) -> None:
    from embedloom.server.guard import warn_if_exposed

    with caplog.at_level("WARNING"):
        warn_if_exposed(Settings(host=host, api_key=keys))
    assert ("without an API key" in caplog.text) is warned


@pytest.mark.parametrize(
    ("field", "value"), [("backend", "tensorrt"), ("dtype", "fp8"), ("sharing", "pool")]
)
def test_a_value_outside_a_fields_choices_is_refused_by_the_constructor_too(
    field: str, value: str
) -> None:
    with pytest.raises(SettingsError, match=f"{field} must be one of .*got '{value}'"):
        Settings(**{field: value})  # type: ignore[arg-type]


# -- several models and the config file ------------------------------------------------


def test_models_are_named_and_the_first_is_the_default(tmp_path: Path) -> None:
    local = tmp_path / "my-bge"
    local.mkdir()
    settings = Settings.from_env(
        {"EMBEDLOOM_MODEL": f"small=all-MiniLM-L6-v2, {local}, org/big@v2"}
    )
    assert [(m.name, m.ref) for m in settings.models] == [
        ("small", "all-MiniLM-L6-v2"),
        ("my-bge", str(local)),  # a directory by its name
        ("org/big", "org/big@v2"),  # a hub id without its revision
    ]
    assert settings.model_ref == "all-MiniLM-L6-v2"
    assert settings.for_model("org/big").model == ("org/big@v2",)
    with pytest.raises(SettingsError, match="given to two models"):
        Settings(model=("a=x", "a=y"))
    with pytest.raises(SettingsError, match="NAME=REF"):
        Settings(model=("=x",))
    with pytest.raises(SettingsError, match="not served"):
        settings.for_model("nope")


_CONFIG = """\
threads = 2
keep-alive = 600

[models.small]
model = "all-MiniLM-L6-v2"
aliases = ["text-embedding-ada-002"]
max-batch-tokens = 4096

[models.docs]
model = "org/docs"
backend = "onnx"
"""


def test_a_config_file_gives_each_model_its_own_settings(tmp_path: Path) -> None:
    path = tmp_path / "embedloom.toml"
    path.write_text(_CONFIG)
    settings = Settings.from_file(path, {})
    assert (settings.threads, settings.keep_alive) == (2, 600.0)
    small, _docs = settings.models
    assert (small.name, small.ref, small.aliases) == (
        "small",
        "all-MiniLM-L6-v2",
        ("text-embedding-ada-002",),
    )
    assert settings.for_model("small").max_batch_tokens == 4096
    assert settings.for_model("small").backend == "auto"
    assert settings.for_model("docs").backend == "onnx"
    assert settings.for_model("docs").max_batch_tokens == 8192
    # Variables and flags win over the file.
    env = Settings.from_file(path, {"EMBEDLOOM_THREADS": "1"}, keep_alive=5.0)
    assert (env.threads, env.keep_alive) == (1, 5.0)
    # A flag naming one of the file's models serves that one, as the file defines it.
    only = Settings.from_file(path, {}, model=["docs"])
    assert [(m.name, m.ref) for m in only.models] == [("docs", "org/docs")]
    assert only.for_model("docs").backend == "onnx"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("threads = [", "not valid TOML"),
        ("port = 1\nthreadz = 2\n", "embedloom.toml:2: threadz: no such setting"),
        ("port = 'x'\n", "embedloom.toml:1: port: expected int"),
        ("sharing = 'fast'\n", "expected one of auto"),
        ('[models.a]\nmodel = "x"\nport = 9\n', "embedloom.toml:3: models.a.port: not a per-model"),
        ("[models.a]\nbackend = 'onnx'\n", "embedloom.toml:1: models.a: expected the model"),
        ('[models.a]\nmodel = "x"\naliases = "y"\n', ":3: models.a.aliases: expected a list"),
        ('model = "x"\n[models.a]\nmodel = "y"\n', "either as 'model' or as [models.NAME]"),
    ],
)
def test_a_malformed_config_file_is_one_error_naming_the_line(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "embedloom.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=re.escape(words)):
        Settings.from_file(path, {})
