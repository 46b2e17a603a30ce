"""Settings from the environment: names, legacy names, defaults and precise errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iot_config_core import DocumentLimits
from iot_config_server.logging_setup import configure_logging
from iot_config_server.request_ids import current_request_id
from iot_config_server.settings import Settings, SettingsError, default_threads


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.store_url == "./iot-configs"
    assert (settings.host, settings.port, settings.threads, settings.workers) == (
        "127.0.0.1",
        8080,
        default_threads(),
        1,
    )
    assert settings.max_document_bytes == DocumentLimits().max_bytes == 1048576
    assert settings.store_stall_seconds == 1.0
    assert not settings.access_log
    assert settings.cors_origins == ()
    assert settings.admin_tokens == ()
    assert not settings.auth_enabled
    assert (settings.log_level, settings.log_format) == ("INFO", "text")


def test_every_variable() -> None:
    settings = Settings.from_env(
        {
            "IOT_CONFIG_STORE": "s3://bucket/prefix",
            "IOT_CONFIG_HOST": "0.0.0.0",
            "IOT_CONFIG_PORT": "9000",
            "IOT_CONFIG_THREADS": "16",
            "IOT_CONFIG_WORKERS": "4",
            "IOT_CONFIG_MAX_DOCUMENT_BYTES": "2048",
            "IOT_CONFIG_CORS_ORIGINS": "https://a.example, https://b.example:8443",
            "IOT_CONFIG_ADMIN_TOKENS": "one,two",
            "IOT_CONFIG_LOG_LEVEL": "debug",
            "IOT_CONFIG_LOG_FORMAT": "JSON",
            "IOT_CONFIG_STORE_STALL_SECONDS": "2.5",
            "IOT_CONFIG_ACCESS_LOG": "on",
            "IOT_CONFIG_LIST_WATCH": "OFF",
            "UNRELATED": "ignored",
        }
    )
    assert settings == Settings(
        store_url="s3://bucket/prefix",
        host="0.0.0.0",
        port=9000,
        threads=16,
        workers=4,
        max_document_bytes=2048,
        cors_origins=("https://a.example", "https://b.example:8443"),
        admin_tokens=("one", "two"),
        log_level="DEBUG",
        log_format="json",
        store_stall_seconds=2.5,
        access_log=True,
        list_watch="off",
    )
    assert settings.auth_enabled
    assert settings.log_level_number == logging.DEBUG


def test_legacy_variables_and_precedence() -> None:
    legacy = Settings.from_env({"ESP32_CONFIGS_DIR": "/srv/old", "CORS_ORIGINS": "http://ui.local"})
    assert legacy.store_url == "/srv/old"
    assert legacy.cors_origins == ("http://ui.local",)
    both = Settings.from_env(
        {
            "ESP32_CONFIGS_DIR": "/srv/old",
            "IOT_CONFIG_STORE": "/srv/new",
            "CORS_ORIGINS": "http://old.local",
            "IOT_CONFIG_CORS_ORIGINS": "http://new.local",
        }
    )
    assert both.store_url == "/srv/new"
    assert both.cors_origins == ("http://new.local",)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"IOT_CONFIG_PORT": "eighty"}, "IOT_CONFIG_PORT"),
        ({"IOT_CONFIG_PORT": "70000"}, "IOT_CONFIG_PORT"),
        ({"IOT_CONFIG_PORT": "-1"}, "IOT_CONFIG_PORT"),
        ({"IOT_CONFIG_THREADS": "0"}, "IOT_CONFIG_THREADS"),
        ({"IOT_CONFIG_WORKERS": "1.5"}, "IOT_CONFIG_WORKERS"),
        ({"IOT_CONFIG_MAX_DOCUMENT_BYTES": "0"}, "IOT_CONFIG_MAX_DOCUMENT_BYTES"),
        ({"IOT_CONFIG_LOG_LEVEL": "LOUD"}, "IOT_CONFIG_LOG_LEVEL"),
        ({"IOT_CONFIG_LOG_FORMAT": "xml"}, "IOT_CONFIG_LOG_FORMAT"),
        ({"IOT_CONFIG_CORS_ORIGINS": "not-an-origin"}, "IOT_CONFIG_CORS_ORIGINS"),
        ({"IOT_CONFIG_CORS_ORIGINS": "https://a.example/path/x"}, "IOT_CONFIG_CORS_ORIGINS"),
        ({"CORS_ORIGINS": "bogus"}, "CORS_ORIGINS"),
        ({"IOT_CONFIG_STORE": "   "}, "IOT_CONFIG_STORE"),
        ({"ESP32_CONFIGS_DIR": ""}, "ESP32_CONFIGS_DIR"),
        ({"IOT_CONFIG_ADMIN_TOKENS": "caf\u00e9-token"}, "IOT_CONFIG_ADMIN_TOKENS"),
        ({"IOT_CONFIG_STORE_STALL_SECONDS": "0"}, "IOT_CONFIG_STORE_STALL_SECONDS"),
        ({"IOT_CONFIG_STORE_STALL_SECONDS": "soon"}, "IOT_CONFIG_STORE_STALL_SECONDS"),
        ({"IOT_CONFIG_ACCESS_LOG": "maybe"}, "IOT_CONFIG_ACCESS_LOG"),
        ({"IOT_CONFIG_LIST_WATCH": "on"}, "IOT_CONFIG_LIST_WATCH"),
        ({"IOT_CONFIG_HISTORY_LIMIT": "-1"}, "IOT_CONFIG_HISTORY_LIMIT"),
        ({"IOT_CONFIG_HISTORY_LIMIT": "all"}, "IOT_CONFIG_HISTORY_LIMIT"),
        (
            {"IOT_CONFIG_STORE": "memory://fleet", "IOT_CONFIG_WORKERS": "2"},
            "IOT_CONFIG_WORKERS",
        ),
    ],
)
def test_invalid_values_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ": ")
    assert caught.value.code == "INVALID_SETTING"


def test_default_threads_do_not_make_granian_warn() -> None:
    """Granian warns at start-up above 2 threads per CPU + 1; the default stays at that bound."""
    cpus = os.cpu_count() or 1
    assert Settings().threads == 2 * cpus + 1 >= 3


def test_one_worker_may_serve_a_memory_store() -> None:
    assert Settings(store_url="memory://fleet", workers=1).workers == 1
    with pytest.raises(SettingsError, match="memory:// store lives in one process"):
        Settings(store_url="memory://fleet", workers=3)


def test_settings_open_their_store_with_their_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One method opens the store for serve, the WSGI factory and the CLI."""
    store = Settings(store_url=str(tmp_path), max_document_bytes=2048).open_store()
    assert store.limits == DocumentLimits(max_bytes=2048)
    monkeypatch.chdir(tmp_path)
    assert Settings(store_url="iot-configs/.").creates_store
    Settings().open_store()
    assert (tmp_path / "iot-configs").is_dir()  # only the default store is ever created
    elsewhere = Settings(store_url=str(tmp_path / "elsewhere"))
    assert not elsewhere.creates_store
    elsewhere.open_store(create=True)  # the CLI's --create-store
    assert (tmp_path / "elsewhere").is_dir()


def test_tokens_never_in_repr_or_errors() -> None:
    settings = Settings(admin_tokens=("hunter2-secret",))
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"IOT_CONFIG_ADMIN_TOKENS": "ok-token caf\u00e9-hunter2"})
    assert "hunter2" not in str(caught.value)


@given(
    port=st.integers(0, 65535),
    threads=st.integers(1, 10_000),
    origins=st.lists(
        st.from_regex(r"https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True), max_size=4
    ),
)
def test_round_trip_through_the_environment(port: int, threads: int, origins: list[str]) -> None:
    environ = {
        "IOT_CONFIG_PORT": f" {port} ",
        "IOT_CONFIG_THREADS": str(threads),
        "IOT_CONFIG_CORS_ORIGINS": ",".join(origins),
    }
    settings = Settings.from_env(environ)
    assert (settings.port, settings.threads, settings.cors_origins) == (
        port,
        threads,
        tuple(origins),
    )


# -- logging ------------------------------------------------------------------------------------


def _run_logging(settings_code: str) -> list[str]:
    """Configure logging in a fresh interpreter (root handlers are process-wide) and log twice."""
    script = f"""
import logging
from iot_config_server.logging_setup import configure_logging
from iot_config_server.request_ids import current_request_id
from iot_config_server.settings import Settings
configure_logging({settings_code})
configure_logging({settings_code})  # twice: still one line per record
log = logging.getLogger("iot_config_server.test")
log.info("outside")
token = current_request_id.set("rid-42")
log.info("inside %s", "request", extra={{"mac_address": "aa-bb-cc-dd-ee-ff"}})
current_request_id.reset(token)
log.debug("hidden at INFO")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return result.stdout.splitlines()


def test_text_logging_to_stdout_with_request_id() -> None:
    lines = _run_logging("Settings()")
    assert len(lines) == 2
    assert "[-] outside" in lines[0]
    assert "[rid-42] inside request" in lines[1]
    assert "INFO iot_config_server.test" in lines[1]


def test_json_logging_one_object_per_line() -> None:
    lines = _run_logging('Settings(log_format="json", log_level="INFO")')
    records = [json.loads(line) for line in lines]
    assert [r["message"] for r in records] == ["outside", "inside request"]
    assert [r["request_id"] for r in records] == ["-", "rid-42"]
    assert records[1]["mac_address"] == "aa-bb-cc-dd-ee-ff"
    assert records[1]["level"] == "INFO"
    assert records[1]["logger"] == "iot_config_server.test"


def test_configure_logging_in_process_sets_level() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        configure_logging(Settings(log_level="WARNING"))
        assert root.level == logging.WARNING
        ours = [h for h in root.handlers if h.get_name() == "iot-config"]
        assert len(ours) == 1
        record = logging.makeLogRecord({"msg": "x"})
        token = current_request_id.set("abc")
        try:
            assert ours[0].filters[0].filter(record)  # type: ignore[union-attr]
        finally:
            current_request_id.reset(token)
        assert record.request_id == "abc"  # type: ignore[attr-defined]
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "iot-config"]:
            root.removeHandler(handler)
        root.setLevel(before[0])


def test_package_and_settings_import_without_bottle() -> None:
    """The CLI's non-serving commands run without the server extra installed."""
    script = (
        "import sys, iot_config_server\n"
        "from iot_config_server.settings import Settings\n"
        "from iot_config_server.logging_setup import configure_logging\n"
        "assert 'bottle' not in sys.modules, 'bottle imported eagerly'\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "iot_config_server.create_app\n"
        "assert 'bottle' in sys.modules\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
