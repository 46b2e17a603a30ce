"""Shared test settings: Hypothesis without wall-clock deadlines (the tests do real I/O)."""

from __future__ import annotations

import os

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
