"""iot_config_server: the REST and device-polling service over `iot_config_core`.

Bottle is imported only when `create_app` is first used, so the CLI's non-serving commands work
without the ``server`` extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iot_config_core import __version__

if TYPE_CHECKING:
    from .app import create_app
    from .settings import Settings

__all__ = ["Settings", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app  # noqa: PLC0415 (lazy: bottle is an optional extra)

        return create_app
    if name == "Settings":
        from .settings import Settings  # noqa: PLC0415

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
