"""Prometheus metrics of the fleet, computed from the fleet database at scrape time.

A custom collector (:class:`FleetMetrics`) reads the :class:`~edge.delivery.collector.FleetStore` whenever it is
scraped, so the numbers always match ``fedge fleet status`` and the dashboard's table: nothing is counted twice, and
a collector restarted on the same database carries on where it was. Exposed by ``fedge fleet collect --metrics-port``
and on the dashboard's ``/metrics``.

Metrics (all prefixed ``fedge_fleet_``):

- ``devices{state}``, ``devices_by_version{model_id,version}``, ``devices_by_runtime{runtime}``: gauges;
- ``telemetry_received_total``, ``telemetry_lost_total`` (gaps in sequence numbers),
  ``telemetry_duplicates_total``, ``malformed_messages_total``: counters;
- ``update_outcomes_total{outcome,reason}``: the devices' reported update outcomes (applied, rejected, rolled-back);
- ``degraded_events_total{model_id,version,measure,action}``: groups whose field telemetry degraded
  (:mod:`edge.delivery.feedback`), and whether they were rolled back;
- ``rollouts{status}``: rollouts by status, where a rollout record is given (the demo's ``rollouts.json``);
- ``inference_latency_ms{device_id,quantile}``, ``device_accuracy{device_id}``,
  ``device_last_seen_timestamp_seconds{device_id}``: each device's latest telemetry.

>>> from edge.delivery.collector import FleetStore
>>> text = metrics_text(FleetMetrics(FleetStore(":memory:"))).decode()
>>> 'fedge_fleet_devices{state="ready"} 0.0' in text
True
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.agent.protocol import STATES
from edge.delivery.collector import FleetStore
from edge.delivery.errors import DeliveryError
from edge.delivery.feedback import degraded_events
from edge.delivery.fleet_db import is_postgres_url
from edge.delivery.postgres_store import PostgresFleetStore

PREFIX = "fedge_fleet"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsError(DeliveryError):
    """The metrics endpoint cannot be served (prometheus_client missing, port taken)."""


def _prometheus():
    try:
        import prometheus_client
        from prometheus_client import core
    except ImportError as e:
        raise MetricsError(
            'Prometheus metrics need prometheus_client, which is not installed: pip install "fedge[fleet]"'
        ) from e
    return prometheus_client, core


class FleetMetrics:
    """A Prometheus collector over a fleet database.

    ``store`` is a store the caller keeps open (the collector's own: a :class:`FleetStore` or a
    :class:`~edge.delivery.postgres_store.PostgresFleetStore`), or what names a database that is opened read-only
    for each scrape (the dashboard): the path of a SQLite file (one that does not exist yet reads as an empty
    fleet) or a ``postgresql://`` URL (a database that no collector has written yet reads as an empty fleet; one
    that cannot be reached is a :class:`MetricsError`). ``rollouts``, if given, returns the rollout reports to
    count by status.
    """

    def __init__(self, store: Any, *, rollouts: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        _prometheus()
        self.store = store
        self.rollouts = rollouts

    def _open(self) -> tuple[Any, bool]:
        if not isinstance(self.store, (str, Path)):
            return self.store, False
        if is_postgres_url(self.store):
            try:
                store = PostgresFleetStore(str(self.store), read_only=True)
            except DeliveryError as e:
                raise MetricsError(str(e)) from e
            if store.has_schema():
                return store, True
            store.close()
            return None, False
        try:
            return FleetStore(self.store, read_only=True), True
        except (FileNotFoundError, OSError):
            return None, False

    def collect(self) -> Iterator[Any]:
        _, core = _prometheus()
        store, close = self._open()
        try:
            devices = store.devices() if store else []
            sequence = store.sequence_report() if store else {"received": 0, "lost": 0, "duplicates": 0}
            malformed = len(store.malformed()) if store else 0
            outcomes = store.event_counts() if store else []
            degraded = degraded_events(store) if store else []
        finally:
            if close and store is not None:
                store.close()

        by_state = collections.Counter({s: 0 for s in STATES})
        by_state.update(d.get("state") or "unknown" for d in devices)
        g = core.GaugeMetricFamily(f"{PREFIX}_devices", "Devices by their last reported state.", labels=["state"])
        for state, n in sorted(by_state.items()):
            g.add_metric([state], n)
        yield g

        by_version = collections.Counter(
            (d.get("model_id") or "", "" if d.get("version") is None else str(d["version"])) for d in devices
        )
        g = core.GaugeMetricFamily(
            f"{PREFIX}_devices_by_version",
            "Devices by the model id and version they run (empty labels: no model yet).",
            labels=["model_id", "version"],
        )
        for (model_id, version), n in sorted(by_version.items()):
            g.add_metric([model_id, version], n)
        yield g

        by_runtime = collections.Counter(d.get("runtime") or "" for d in devices)
        g = core.GaugeMetricFamily(f"{PREFIX}_devices_by_runtime", "Devices by inference runtime.", labels=["runtime"])
        for runtime, n in sorted(by_runtime.items()):
            g.add_metric([runtime], n)
        yield g

        for name, key, help_text in (
            ("telemetry_received", "received", "Telemetry messages stored (a QoS 1 redelivery counts once)."),
            ("telemetry_lost", "lost", "Telemetry messages lost: gaps in each device session's sequence numbers."),
            ("telemetry_duplicates", "duplicates", "Telemetry redeliveries dropped as duplicates."),
        ):
            yield core.CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=sequence[key])
        yield core.CounterMetricFamily(
            f"{PREFIX}_malformed_messages", "Device messages that failed validation.", value=malformed
        )

        c = core.CounterMetricFamily(
            f"{PREFIX}_update_outcomes",
            "Update outcomes the devices reported: applied, rejected (with the reason), rolled-back.",
            labels=["outcome", "reason"],
        )
        for row in outcomes:
            c.add_metric([row["outcome"], row["reason"] or ""], row["n"])
        yield c

        c = core.CounterMetricFamily(
            f"{PREFIX}_degraded_events",
            "Device groups (model id, version) whose field telemetry degraded against their acceptance report.",
            labels=["model_id", "version", "measure", "action"],
        )
        for row in degraded:
            c.add_metric([row["model_id"] or "", str(row["version"]), row["measure"] or "", row["action"] or ""], 1)
        yield c

        if self.rollouts is not None:
            statuses = collections.Counter(str(r.get("status", "")) for r in self.rollouts())
            g = core.GaugeMetricFamily(f"{PREFIX}_rollouts", "Staged rollouts by their status.", labels=["status"])
            for status, n in sorted(statuses.items()):
                g.add_metric([status], n)
            yield g

        latency = core.GaugeMetricFamily(
            f"{PREFIX}_inference_latency_ms",
            "Inference latency per sample in each device's latest telemetry window.",
            labels=["device_id", "quantile"],
        )
        accuracy = core.GaugeMetricFamily(
            f"{PREFIX}_device_accuracy",
            "Accuracy on labelled samples in each device's latest telemetry window.",
            labels=["device_id"],
        )
        seen = core.GaugeMetricFamily(
            f"{PREFIX}_device_last_seen_timestamp_seconds",
            "When the collector last heard from each device (Unix time).",
            labels=["device_id"],
        )
        for d in devices:
            for quantile, key in (("0.5", "latency_ms_p50"), ("0.95", "latency_ms_p95")):
                if d.get(key) is not None:
                    latency.add_metric([d["device_id"], quantile], d[key])
            if d.get("accuracy") is not None:
                accuracy.add_metric([d["device_id"]], d["accuracy"])
            if d.get("last_seen") is not None:
                seen.add_metric([d["device_id"]], d["last_seen"])
        yield from (latency, accuracy, seen)


def metrics_registry(metrics: FleetMetrics):
    """A registry holding only ``metrics`` (not the process's default collectors)."""
    prometheus_client, _ = _prometheus()
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry


def metrics_text(metrics: FleetMetrics) -> bytes:
    """The Prometheus text exposition of ``metrics``, scraped now."""
    prometheus_client, _ = _prometheus()
    return prometheus_client.generate_latest(metrics_registry(metrics))


class MetricsServer:
    """``/metrics`` over HTTP in a background thread (prometheus_client's own server); ``stop()`` ends it."""

    def __init__(self, metrics: FleetMetrics, *, port: int, host: str = "127.0.0.1") -> None:
        prometheus_client, _ = _prometheus()
        try:
            self._server, self._thread = prometheus_client.start_http_server(
                port, addr=host, registry=metrics_registry(metrics)
            )
        except OSError as e:
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: {e}; choose another --metrics-port (0 picks a free one)"
            ) from e
        self.host = host
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
