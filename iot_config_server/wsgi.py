"""WSGI application factories, for servers that import the app by path and for embedding.

``iot-config serve`` is the supported way to run the service. These factories are for everything
else: another WSGI server (``gunicorn 'iot_config_server.wsgi:create_app_from_env()'``,
``granian --interface wsgi --factory iot_config_server.wsgi:create_app_from_env``), a test, or a
parent Bottle app that mounts ours. Nothing is built at import time: each call makes a new app.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from iot_config_core import ConfigError, ConfigStore

from .access_log import WsgiApp, wrap_access_log
from .app import METRICS_CONFIG_KEY, create_app
from .logging_setup import configure_logging
from .metrics import AppMetrics
from .publisher import HandOff
from .settings import Settings

if TYPE_CHECKING:
    from .notifications import Notifier

log = logging.getLogger(__name__)

__all__ = ["create_app_from_env", "create_app_from_settings"]


def create_app_from_settings(
    settings: Settings, *, hand_off: str | None = None, publisher_metrics: str | None = None
) -> WsgiApp:
    """Configure logging, open the store and build the app: what one server worker runs.

    The app is the Bottle app of `create_app`, wrapped by the access log when it is on.

    MQTT notifications (``MQTT_URL``): ``iot-config serve`` publishes from one process of its
    own and passes its hand-off FIFO as ``hand_off`` (`iot_config_server.publisher`); this app
    only writes its own changes there, and ``/metrics`` adds the publisher's metric files in
    ``publisher_metrics`` (when they are not the workers' own directory). Without ``hand_off``
    (another WSGI server, embedding), the app publishes from a thread of its own process, one
    publisher per process.

    The first listing is started in the background, so the config count in ``/metrics`` is right
    from the first scrape and the first ``GET /api/configs`` finds a warm cache, while the server
    starts answering (and probes pass) at once.
    """
    configure_logging(settings)
    store = settings.open_store()
    if hand_off is not None and settings.mqtt_url is not None:
        handed = HandOff(hand_off)
        bottle_app = create_app(store, settings, on_change=handed)
        metrics: AppMetrics = bottle_app.config[METRICS_CONFIG_KEY]
        if publisher_metrics is not None:
            metrics.include_files(publisher_metrics)
        handed.count_drops(
            metrics.counter(
                "mqtt_handoffs_dropped",
                "Own writes not handed to the MQTT publisher process (its hand-off was full or "
                "gone): they are announced after its next poll instead.",
            )
        )
    else:
        notifier = _notifier(store, settings)
        bottle_app = create_app(
            store, settings, on_change=None if notifier is None else notifier.announce
        )
        if notifier is not None:
            notifier.start(bottle_app.config[METRICS_CONFIG_KEY])
    app = wrap_access_log(bottle_app, settings)
    threading.Thread(
        target=_warm_listing, args=(store,), name="listing-warm-up", daemon=True
    ).start()
    return app


def _notifier(store: ConfigStore, settings: Settings) -> Notifier | None:
    """MQTT notifications when ``MQTT_URL`` is set (paho is imported only then)."""
    if settings.mqtt_url is None:
        log.info("MQTT notifications off (MQTT_URL is not set)")
        return None
    from .notifications import notifier_from_settings  # noqa: PLC0415

    return notifier_from_settings(store, settings)


def _warm_listing(store: ConfigStore) -> None:
    try:
        listing = store.listing()
    except ConfigError as exc:  # an outage now is reported by readiness and by requests
        log.warning("could not list %s at start-up: %s", store.description, exc.message)
    else:
        log.info("%d configs in %s", len(listing.summaries), store.description)


def create_app_from_env(environ: Mapping[str, str] | None = None) -> WsgiApp:
    """The app configured by ``IOT_CONFIG_*`` variables (``os.environ`` unless given).

    Raises `iot_config_server.settings.SettingsError` naming a variable with an unusable value.
    """
    return create_app_from_settings(Settings.from_env(os.environ if environ is None else environ))
