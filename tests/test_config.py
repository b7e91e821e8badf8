"""Settings: one object, fed by flags and EMBEDLOOM_* variables, validated on creation."""

from __future__ import annotations

import pytest

from embedloom.config import Settings, SettingsError, setting_specs


def test_defaults_bind_loopback_on_8080() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.model == "all-MiniLM-L6-v2"


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
    assert settings.model == "all-MiniLM-L6-v2", "None means 'not given'"


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
