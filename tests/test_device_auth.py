"""Device auth settings and the pieces of `iot_config_server.device_auth` that need no server."""

from __future__ import annotations

import pytest

from iot_config_server.device_auth import LogBudget
from iot_config_server.settings import Settings, SettingsError


def test_device_auth_is_off_by_default() -> None:
    settings = Settings.from_env({})
    assert settings.device_auth == "off"
    assert settings.device_secret_file is None


def test_device_auth_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {"IOT_CONFIG_DEVICE_AUTH": "Required", "IOT_CONFIG_DEVICE_SECRET_FILE": "/run/s"}
    )
    assert (settings.device_auth, settings.device_secret_file) == ("required", "/run/s")


def test_an_unknown_mode_names_the_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"IOT_CONFIG_DEVICE_AUTH": "strict"})
    assert caught.value.variable == "IOT_CONFIG_DEVICE_AUTH"


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_a_mode_that_checks_tokens_needs_a_secret_file(mode: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"IOT_CONFIG_DEVICE_AUTH": mode})
    assert caught.value.variable == "IOT_CONFIG_DEVICE_SECRET_FILE"


def test_the_log_budget_holds_lines_back_and_says_how_many() -> None:
    now = [0.0]
    budget = LogBudget(lines=2, interval=10.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, None, None, None]
    now[0] = 10.0
    assert budget.take() == 3
    assert budget.take() == 0
    assert budget.take() is None
