"""Shared test settings and fixtures: Hypothesis without wall-clock deadlines (the tests do real
I/O), a store on a fresh directory and the app over it.

Helpers for child processes (servers, ports, tools) are in ``support.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from iot_config_core import ConfigStore, open_store

if TYPE_CHECKING:
    import webtest

settings.register_profile(
    "iot-config",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "iot-config-ci", parent=settings.get_profile("iot-config"), derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "iot-config"))


def pytest_configure(config: pytest.Config) -> None:
    # When a property fails, Hypothesis scans loaded modules to explain it and touches
    # mypy_extensions.TypedDict; with warnings as errors that hid the falsifying example.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    """A store on a fresh local directory (a module may override ``store`` with its own kind)."""
    return open_store(str(tmp_path / "configs"), create=True)


@pytest.fixture(params=["disk", "memory"])
def disk_or_memory_store(request: pytest.FixtureRequest, tmp_path: Path) -> ConfigStore:
    """A fresh store on local disk, then in memory: for modules whose tests hold on both."""
    if request.param == "disk":
        return open_store(str(tmp_path / "configs"), create=True)
    return open_store("memory://configs", create=True)


@pytest.fixture
def app(store: ConfigStore) -> webtest.TestApp:
    """The app with default settings over ``store``, driven in-process by WebTest."""
    import webtest  # noqa: PLC0415 -- the server extra: imported by the tests that use it

    from iot_config_server import Settings, create_app  # noqa: PLC0415

    return webtest.TestApp(create_app(store, Settings()))
