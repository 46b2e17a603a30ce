"""``python -m iot_config_server``: the ``iot-config`` command without the console script."""

from __future__ import annotations

import sys

from iot_config_server.cli import main

sys.exit(main())
