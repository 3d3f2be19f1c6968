"""The MQTT side of a client (paho-mqtt 2.x, MQTT 3.1.1): connection settings shared by the agent and the server
tools, and the transport the agent runs on.

Every fedge client connects with a persistent session (``clean_session=False``) and a fixed client id, so the
broker queues QoS 1 messages for it while it is away; paho keeps QoS 1 messages published while disconnected and
sends them on reconnection; reconnection is automatic (``loop_start``) with a short back-off.
"""

from __future__ import annotations

import queue
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.agent.protocol import QOS, BrokerAddress


class BufferedReadClient(mqtt.Client):
    """A paho client that reads the socket 64 KiB at a time, for a client that receives a stream of small messages.

    paho 2.x reads every packet with at least three ``recv`` calls (the fixed header byte by byte, then the rest)
    and goes back to ``select`` after each packet when it has nothing in flight: at thousands of telemetry messages
    a second that is most of the collector's network thread. Here one ``recv`` fills a buffer, paho's small reads
    are served from it, and :meth:`loop_read` goes on while the buffer holds data (``select`` would not see it).
    The buffer belongs to one socket: a reconnection starts empty.
    """

    READ_SIZE = 65536
    MAX_PACKETS_PER_READ = 1000  # then return to the loop, so queued acknowledgements get written

    _read_socket: object = None
    _read_buffer: bytes = b""
    _read_pos: int = 0

    def _buffered(self) -> int:
        return len(self._read_buffer) - self._read_pos if self._read_socket is self._sock else 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_socket is not self._sock or self._read_pos >= len(self._read_buffer):
            data = super()._sock_recv(self.READ_SIZE)  # raises BlockingIOError when there is nothing to read
            self._read_socket, self._read_buffer, self._read_pos = self._sock, data, 0
            if not data:
                return data  # the broker closed the connection
        start = self._read_pos
        self._read_pos = min(start + bufsize, len(self._read_buffer))
        return self._read_buffer[start : self._read_pos]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(self.MAX_PACKETS_PER_READ):
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None or not self._buffered():
                break
            rc = super().loop_read(max_packets)
        return rc


def make_client(
    client_id: str,
    broker: BrokerAddress,
    *,
    clean_session: bool = False,
    ca_file: Path | None = None,
    max_inflight: int = 100,
    buffered_reads: bool = False,
) -> mqtt.Client:
    """A paho client configured the fedge way (not yet connected); ``buffered_reads`` for a
    :class:`BufferedReadClient`."""
    client = (BufferedReadClient if buffered_reads else mqtt.Client)(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(min_delay=1, max_delay=4)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)  # unbounded: the agent bounds what it keeps itself
    return client


class MqttTransport:
    """The agent's :class:`~edge.agent.agent.Transport` over paho. Connection events and messages are put on
    ``inbox`` for the agent's own thread; the paho thread never runs agent code. A bounded ``inbox`` that is full
    makes the paho thread wait (the broker holds the rest), until :meth:`stop`."""

    def __init__(
        self,
        client_id: str,
        broker: BrokerAddress,
        *,
        inbox: queue.Queue,
        will: tuple[str, bytes] | None = None,
        ca_file: Path | None = None,
        keepalive: int = 10,
    ) -> None:
        self.broker = broker
        self.inbox = inbox
        self.keepalive = keepalive
        self._connected = threading.Event()
        self._closing = threading.Event()
        self.client = make_client(client_id, broker, ca_file=ca_file)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=QOS, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; keeps retrying until the broker is there."""
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.keepalive)
        self.client.loop_start()

    def stop(self, *, last: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Publish ``last`` (retained; the clean "disconnected" state), then disconnect without the last will."""
        self._closing.set()
        if last is not None and self.connected:
            info = self.client.publish(last[0], last[1], qos=QOS, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = QOS, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic_filter: str, *, qos: int = QOS) -> None:
        self.client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self.client.unsubscribe(topic_filter)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._put(("refused", str(reason_code)))
            return
        self._connected.set()
        self._put(("connect",))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def _put(self, item: tuple) -> None:
        while not self._closing.is_set():
            try:
                self.inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _on_message(self, client, userdata, message) -> None:
        self._put(("message", message.topic, bytes(message.payload)))
