"""Process logging: one stdout handler, text or JSON lines, the request id on every line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from .request_ids import current_request_id
from .settings import Settings

__all__ = ["JsonFormatter", "RequestIdFilter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Attributes every LogRecord has; anything else was passed as ``extra=`` and is kept in JSON.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Stamp each record with the id of the request being handled (``-`` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        record.request_id = current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; extras become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", current_request_id.get()),
            "message": record.getMessage(),
        }
        entry.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Route the root logger to stdout in the configured format and level.

    Replaces handlers installed by an earlier call, so calling it twice does not double lines.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.set_name("iot-config")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "iot-config"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level_number)
