"""Shared test settings: Hypothesis without wall-clock deadlines (the tests do real I/O)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

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
