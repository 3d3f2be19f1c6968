"""The embedded MQTT broker (amqtt, pure Python): the zero-set-up default for the demo, on loopback only.

Why amqtt 0.11.4, installed apart: amqtt 0.12 needs typer>=0.24, and flwr 1.41 pins typer<0.21; amqtt 0.11.4
declares typer==0.15.4, whose Literal support the flwr CLI needs (typer>=0.16). Its broker (``amqtt.broker``) does
not import typer at all; only amqtt's own command-line scripts do. So fedge installs it with
``pip install --no-deps amqtt==0.11.4`` plus its real runtime dependencies (the ``broker`` extra of
``pyproject.toml``: transitions, passlib, websockets, pyyaml, dacite, psutil), as ``.ci/run`` does, and imports
only ``amqtt.broker``. Tested with paho-mqtt: retained messages, QoS 1, persistent sessions.

It is for demos: anonymous, no ACL, no persistence across restarts, about 1,000 messages/s. A fleet uses Mosquitto
(:mod:`edge.delivery.mosquitto`).

    python -m edge.delivery.embedded_broker --port 1883
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

INSTALL_HINT = (
    'the embedded broker needs amqtt 0.11.4: pip install --no-deps "amqtt==0.11.4" and pip install -e ".[broker]" '
    "(see edge/delivery/embedded_broker.py for why it installs apart)"
)


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "timeout_disconnect_delay": 0,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    try:
        from amqtt.broker import Broker
    except ImportError as e:
        raise SystemExit(f"error: {INSTALL_HINT}") from e
    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"embedded MQTT broker (amqtt) on mqtt://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.delivery.embedded_broker", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=1883)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
