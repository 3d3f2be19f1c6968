"""The server side's MQTT connection: connect (blocking, with a timeout), publish and wait for the broker's ack,
and hand incoming messages to a callback. One per tool (publisher, collector)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.agent.link import make_client
from edge.agent.protocol import QOS, BrokerAddress
from edge.delivery.errors import BrokerError

MessageHandler = Callable[[str, bytes], None]


class ServerClient:
    """A connected paho client with a persistent session; resubscribes on every reconnection. :meth:`connect` returns
    once the broker has confirmed the subscriptions (SUBACK), so a message published after it is heard: before, a
    collector's first start (no session yet) missed what a device sent in its first milliseconds."""

    def __init__(
        self,
        client_id: str,
        broker: BrokerAddress,
        *,
        on_message: MessageHandler | None = None,
        subscriptions: tuple[str, ...] = (),
        ca_file: Path | None = None,
        clean_session: bool = False,
        max_inflight: int = 1000,
        buffered_reads: bool = False,
    ) -> None:
        self.broker = broker
        self.subscriptions = subscriptions
        self.handler = on_message
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._subscribe_mid: int | None = None
        self._refused: str | None = None
        self.client = make_client(
            client_id,
            broker,
            clean_session=clean_session,
            ca_file=ca_file,
            max_inflight=max_inflight,
            buffered_reads=buffered_reads,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._acked: set[int] = set()
        self._acked_lock = threading.Lock()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        if self.subscriptions:  # one SUBSCRIBE for them all: one SUBACK says they are in place
            _, self._subscribe_mid = client.subscribe([(topic, QOS) for topic in self.subscriptions])
        else:
            self._subscribed.set()
        self._connected.set()

    def _on_disconnect(self, *args) -> None:
        self._connected.clear()
        self._subscribed.clear()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [t for t, rc in zip(self.subscriptions, reason_codes, strict=False) if rc.is_failure]
        if refused:
            self._refused = f"subscription refused: {', '.join(refused)}"
            return
        self._subscribed.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked_lock:
            self._acked.add(mid)

    def _on_message(self, client, userdata, message) -> None:
        if self.handler is not None:
            self.handler(message.topic, bytes(message.payload))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, timeout: float = 10.0) -> ServerClient:
        try:  # the first connection at once, so a broker that is not there is said at once (paho retries after)
            self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        except (OSError, ValueError) as e:
            raise BrokerError(
                f"cannot reach the broker at {self.broker.url()}: {e}; start one (`fedge broker`, or Mosquitto) "
                "or fix --broker"
            ) from e
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._subscribed.wait(0.1):  # set once connected and, with subscriptions, once they are confirmed
            if self._refused:
                self.close()
                raise BrokerError(f"the broker at {self.broker.url()} refused the connection: {self._refused}")
            if time.monotonic() > deadline:
                self.close()
                if self._connected.is_set():
                    raise BrokerError(
                        f"the broker at {self.broker.url()} did not confirm the subscriptions "
                        f"({', '.join(self.subscriptions)}) within {timeout:.0f} s"
                    )
                raise BrokerError(
                    f"no broker answered at {self.broker.url()} within {timeout:.0f} s: start one "
                    "(`fedge broker`, or Mosquitto) or fix --broker"
                )
        return self

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=QOS, retain=retain)

    def publish_all(self, messages: list[tuple[str, bytes, bool]], timeout: float = 60.0) -> None:
        """Publish (topic, payload, retain) messages at QoS 1 and wait until the broker acknowledged every one
        (across reconnections: paho resends what was not acknowledged)."""
        # paho keeps a QoS 1 message published while disconnected and sends it on reconnection, with the same
        # message id: so wait for the acknowledgements (on_publish), not for is_published(), which raises then.
        self.wait_for_acks({self.publish(t, p, retain=r).mid for t, p, r in messages}, timeout)

    def wait_for_acks(self, mids: set[int], timeout: float = 60.0) -> None:
        """Wait until the broker acknowledged every QoS 1 message id in ``mids`` (from :meth:`publish`)."""
        pending = set(mids)
        deadline = time.monotonic() + timeout
        while True:
            with self._acked_lock:
                done = pending & self._acked
                pending -= done
                self._acked -= done
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the broker at {self.broker.url()} did not acknowledge {len(pending)} messages "
                    f"within {timeout:.0f} s"
                )
            time.sleep(0.005)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
