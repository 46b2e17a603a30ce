"""MQTT settings: the old service's variable names, ours winning, and clear errors."""

from __future__ import annotations

import pytest

from iot_config_server.broker import BrokerAddress
from iot_config_server.settings import Settings, SettingsError


def test_off_by_default_and_with_an_empty_url() -> None:
    assert Settings().mqtt_broker is None
    assert Settings.from_env({"MQTT_URL": ""}).mqtt_broker is None


def test_the_old_names_are_read_and_ours_win() -> None:
    old = {"MQTT_URL": "mqtt://old:1883", "MQTT_USERNAME": "old", "MQTT_PASSWORD": " pw "}
    settings = Settings.from_env(old)
    assert settings.mqtt_broker == BrokerAddress("old", 1883, tls=False)
    assert (settings.mqtt_username, settings.mqtt_password) == ("old", " pw ")
    new = Settings.from_env(
        {**old, "IOT_CONFIG_MQTT_URL": "mqtts://new", "IOT_CONFIG_MQTT_USERNAME": "new"}
    )
    assert new.mqtt_broker == BrokerAddress("new", 8883, tls=True)
    assert new.mqtt_username == "new"


def test_the_password_never_shows() -> None:
    settings = Settings.from_env({"MQTT_URL": "mqtt://h", "MQTT_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://host", "scheme"),
        ("mqtt://", "no host"),
        ("mqtt://user:pw@host", "MQTT_USERNAME"),
        ("mqtt://host/path", "host.:port. only"),
        ("mqtt://host:99999", "not a broker URL"),
    ],
)
def test_a_bad_url_names_the_variable(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem) as caught:
        Settings.from_env({"MQTT_URL": url})
    assert caught.value.variable == "MQTT_URL"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"IOT_CONFIG_MQTT_URL": url})
    assert caught.value.variable == "IOT_CONFIG_MQTT_URL"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IOT_CONFIG_MQTT_TOPIC_PREFIX", "fleet/+"),
        ("IOT_CONFIG_MQTT_TOPIC_PREFIX", "$SYS/x"),
        ("IOT_CONFIG_MQTT_POLL_SECONDS", "0"),
        ("IOT_CONFIG_MQTT_POLL_SECONDS", "soon"),
    ],
)
def test_bad_prefixes_and_intervals_are_refused(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable


def test_prefix_and_interval() -> None:
    settings = Settings.from_env(
        {"IOT_CONFIG_MQTT_TOPIC_PREFIX": "/fleet/configs/", "IOT_CONFIG_MQTT_POLL_SECONDS": "0.5"}
    )
    assert (settings.mqtt_topic_prefix, settings.mqtt_poll_seconds) == ("fleet/configs", 0.5)


def test_broker_addresses_print_without_credentials() -> None:
    assert str(BrokerAddress.parse("ssl://[::1]")) == "mqtts://[::1]:8883"
    assert str(BrokerAddress.parse("tcp://h:1")) == "mqtt://h:1"
