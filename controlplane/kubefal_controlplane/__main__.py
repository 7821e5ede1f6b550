"""``python -m kubefal_controlplane``: serve fal's control-plane API until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from kubefal_controlplane import server, settings


def main(argv: Sequence[str] | None = None) -> int:
    config = settings.from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs each relayed /files request (callers' paths) at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server.ControlPlane(config) as plane:
        sys.stdout.write(f"kubefal control plane listening on {config.host}:{plane.port}\n")
        sys.stdout.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
