"""Where the MQTT broker is: ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS).

Parsed once, when the settings are built, so a mistyped ``MQTT_URL`` stops the server at start-up
with the variable named instead of failing later in a background thread. No MQTT library here:
the settings (and so the CLI) must not need one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

__all__ = ["BrokerAddress"]

#: Scheme -> (TLS, default port). ``tcp``/``ssl`` are the spellings other MQTT tools use.
_SCHEMES = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883), "ssl": (True, 8883)}


@attrs.frozen
class BrokerAddress:
    """Host, port and whether to speak TLS; credentials are separate settings, never in here."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """The broker ``url`` names; `ValueError` saying what is wrong otherwise."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a broker URL like mqtt://host:1883 ({exc})") from None
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"scheme must be one of {', '.join(sorted(_SCHEMES))}, not {parts.scheme!r}"
            )
        if not parts.hostname:
            raise ValueError("the URL names no host (like mqtt://host:1883)")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in MQTT_USERNAME/MQTT_PASSWORD, not in the URL")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError("the URL must be scheme://host[:port] only")
        tls, default_port = _SCHEMES[parts.scheme]
        return cls(parts.hostname, default_port if port is None else port, tls)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"
