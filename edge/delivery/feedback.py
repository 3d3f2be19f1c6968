"""Field feedback: the running model's telemetry against what its acceptance report promised.

A device group here is the devices running one model id at one version. For each group, :class:`FeedbackMonitor`
compares the group's recent telemetry with a baseline:

- with labels, the accuracy against the acceptance report's worst-site accuracy (``lineage.acceptance``, which the
  signed manifest carries and each device reports in its retained state), less ``max_accuracy_drop`` and sampling
  noise;
- without labels, the mean confidence and the prediction histogram against the group's first reports on that
  version (total variation distance between the two histograms).

A group that falls below raises one ``degraded`` event (stored in the fleet database's ``degraded`` table, shown by
``fedge fleet status``, Prometheus and the dashboard); with a rollback policy (:class:`FeedbackLoop` with a
publisher: ``fedge fleet collect --rollback-on-degraded --key KEY``) the group gets a signed rollback command to its
previous version, as a canary rollback does.

It also keeps each device's model lineage from its retained state (``device_lineage``: the model's ε for the fleet
table). Both live in the fleet store, SQLite or PostgreSQL alike (tables ``device_lineage`` and ``degraded``): the
store writes :func:`lineage_record` of every state it takes and answers the queries below; this module holds no SQL.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from edge.delivery.errors import DeliveryError

_log = logging.getLogger("fedge.feedback")


class FeedbackConfigError(DeliveryError):
    """A feedback threshold or interval the monitor cannot judge with (out of range, not a number)."""


@dataclass(frozen=True, kw_only=True)
class FeedbackConfig:
    """When a group counts as degraded. The defaults are safe: a few reports are needed, differences must exceed
    sampling noise, and one event is raised per group and version."""

    #: labelled accuracy may be this much below the acceptance report's worst site
    max_accuracy_drop: float = 0.05
    #: mean confidence may fall this much below the group's first reports on the version
    max_confidence_drop: float = 0.15
    #: total variation distance allowed between the first and the recent prediction histograms (0..1)
    max_histogram_distance: float = 0.3
    #: telemetry reports the group must have sent on the version before it is judged (and for the baseline)
    min_reports: int = 3
    #: the recent window: the group's last this many reports
    window_reports: int = 5
    #: a difference in accuracy counts only beyond this many standard errors
    noise_z: float = 2.0
    #: seconds between two checks of :class:`FeedbackLoop`
    interval_s: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            allowed, words = _ALLOWED[f.name]
            whole = f.name in ("min_reports", "window_reports")
            number = isinstance(value, int) if whole else isinstance(value, int | float)
            if isinstance(value, bool) or not number or not math.isfinite(value) or not allowed(value):
                raise FeedbackConfigError(f"{option_name(f.name)} must be {words}, got {value!r}")


#: what each :class:`FeedbackConfig` setting allows: (test, the same in words)
_ALLOWED: dict[str, tuple[Callable[[float], bool], str]] = {
    "max_accuracy_drop": (lambda v: 0 <= v <= 1, "an accuracy drop from 0 to 1"),
    "max_confidence_drop": (lambda v: 0 <= v <= 1, "a confidence drop from 0 to 1"),
    "max_histogram_distance": (lambda v: 0 <= v <= 1, "a total variation distance from 0 to 1"),
    "min_reports": (lambda v: v >= 1, "a whole number of reports, at least 1"),
    "window_reports": (lambda v: v >= 1, "a whole number of reports, at least 1"),
    "noise_z": (lambda v: v >= 0, "a number of standard errors, at least 0"),
    "interval_s": (lambda v: v > 0, "a number of seconds above 0"),
}


def option_name(setting: str) -> str:
    """The ``fedge fleet collect`` option of a :class:`FeedbackConfig` setting (``interval_s``:
    ``--feedback-interval``)."""
    return "--feedback-" + setting.removesuffix("_s").replace("_", "-")


@dataclass(frozen=True)
class Degraded:
    model_id: str
    version: int
    devices: tuple[str, ...]
    measure: str  # accuracy, mean-confidence, histogram
    value: float
    baseline: float
    reason: str


def state_lineage(msg: dict[str, Any]) -> dict[str, Any] | None:
    """What a device's state says of the model it runs: ``{model_id, version, epsilon, lineage}`` (ε: the signed
    lineage's worst-case ``epsilon-max``); ``None`` for a last will (``lost`` carries no model)."""
    if msg.get("state") == "lost":
        return None
    lineage = msg.get("lineage") if isinstance(msg.get("lineage"), dict) else None
    privacy = (lineage or {}).get("privacy") if isinstance((lineage or {}).get("privacy"), dict) else {}
    epsilon = privacy.get("epsilon-max")
    epsilon = float(epsilon) if isinstance(epsilon, int | float) and not isinstance(epsilon, bool) else None
    return {"model_id": msg.get("model_id"), "version": msg.get("version"), "epsilon": epsilon, "lineage": lineage}


def lineage_record(device_id: str, msg: dict[str, Any]) -> tuple | None:
    """The ``device_lineage`` row a device's state gives: (device, model id, version, ε, lineage as JSON); ``None``
    for a last will (the store keeps what the device last said)."""
    block = state_lineage(msg)
    if block is None:
        return None
    lineage = json.dumps(block["lineage"]) if block["lineage"] else None
    return device_id, block["model_id"], block["version"], block["epsilon"], lineage


def degraded_record(event: Degraded, *, raised: float, action: str = "") -> tuple:
    """The ``degraded`` row of an event: (raised, model id, version, devices as JSON, measure, value, baseline,
    reason, action)."""
    return (
        raised,
        event.model_id,
        event.version,
        json.dumps(list(event.devices)),
        event.measure,
        event.value,
        event.baseline,
        event.reason,
        action,
    )


def device_lineage(store: Any) -> dict[str, dict[str, Any]]:
    """Each device's model lineage as it last reported it: ``{device: {model_id, version, epsilon, lineage}}``."""
    out = {}
    for r in store.lineage_rows():
        r["lineage"] = json.loads(r["lineage"]) if r.get("lineage") else None
        out[r["device_id"]] = r
    return out


def degraded_events(store: Any) -> list[dict[str, Any]]:
    """Every degraded event raised, oldest first."""
    rows = store.degraded_rows()
    for r in rows:
        r["devices"] = json.loads(r["devices"]) if r.get("devices") else []
    return rows


def _tv_distance(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    a, b = a + [0] * (n - len(a)), b + [0] * (n - len(b))
    sa, sb = sum(a), sum(b)
    if not sa or not sb:
        return 0.0
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(a, b, strict=True))


def _sum_histograms(rows: list[dict[str, Any]]) -> list[int]:
    total: list[int] = []
    for r in rows:
        h = json.loads(r["histogram"]) if r.get("histogram") else None
        if not h:
            continue
        total += [0] * (len(h) - len(total))
        for i, n in enumerate(h):
            total[i] += int(n)
    return total


def _mean_confidence(rows: list[dict[str, Any]]) -> float | None:
    weighted = [(r["mean_confidence"], r["inferences"]) for r in rows if r.get("mean_confidence") is not None]
    n = sum(w for _, w in weighted)
    return sum(c * w for c, w in weighted) / n if n else None


def judge_group(
    model_id: str,
    version: int,
    devices: list[str],
    telemetry: list[dict[str, Any]],
    acceptance: dict[str, Any] | None,
    config: FeedbackConfig,
) -> Degraded | None:
    """Whether one group's telemetry (oldest first) shows its model degrading (a pure function)."""
    if len(telemetry) < config.min_reports + (0 if acceptance else config.min_reports):
        return None
    recent = telemetry[-config.window_reports :]
    labelled = sum(r["labelled"] for r in recent)
    expected = (acceptance or {}).get("accuracy-min")
    if labelled and isinstance(expected, int | float):
        accuracy = sum(r["correct"] for r in recent) / labelled
        noise = config.noise_z * math.sqrt(max(expected * (1 - expected), 1e-6) / labelled)
        if accuracy < expected - config.max_accuracy_drop - noise:
            return Degraded(
                model_id,
                version,
                tuple(devices),
                "accuracy",
                accuracy,
                float(expected),
                f"accuracy {accuracy:.3f} in the field against {expected:.3f} on the worst site at acceptance",
            )
        return None
    first = telemetry[: config.min_reports]
    if len(telemetry) < 2 * config.min_reports:
        return None
    recent = telemetry[max(config.min_reports, len(telemetry) - config.window_reports) :]
    before, now = _mean_confidence(first), _mean_confidence(recent)
    if before is not None and now is not None and now < before - config.max_confidence_drop:
        return Degraded(
            model_id,
            version,
            tuple(devices),
            "mean-confidence",
            now,
            before,
            f"mean confidence {now:.3f} against {before:.3f} in its first reports on v{version}",
        )
    distance = _tv_distance(_sum_histograms(first), _sum_histograms(recent))
    if distance > config.max_histogram_distance:
        return Degraded(
            model_id,
            version,
            tuple(devices),
            "histogram",
            distance,
            config.max_histogram_distance,
            f"prediction histogram drifted by {distance:.3f} (total variation) since its first reports on v{version}",
        )
    return None


class FeedbackMonitor:
    """Checks every device group in a fleet store and stores the ``degraded`` events it raises (once per group and
    version)."""

    def __init__(self, store: Any, config: FeedbackConfig | None = None) -> None:
        self.store = store
        self.config = config or FeedbackConfig()

    def _raised(self) -> set[tuple[str, int]]:
        return {(e["model_id"], e["version"]) for e in degraded_events(self.store)}

    def check(self) -> list[Degraded]:
        """Judge each group running a model; store and return the new ``degraded`` events."""
        states = self.store.device_states()
        lineage = device_lineage(self.store)
        groups: dict[tuple[str, int], list[str]] = {}
        for d, row in states.items():
            if row.get("model_id") and row.get("version") is not None and row.get("state") != "lost":
                groups.setdefault((row["model_id"], int(row["version"])), []).append(d)
        raised = self._raised()
        found = []
        for (model_id, version), devices in sorted(groups.items()):
            if (model_id, version) in raised:
                continue
            telemetry = self.store.group_telemetry(model_id, version, devices)
            acceptance = next(
                (
                    (lineage[d].get("lineage") or {}).get("acceptance")
                    for d in devices
                    if d in lineage and lineage[d].get("version") == version and lineage[d].get("lineage")
                ),
                None,
            )
            verdict = judge_group(model_id, version, sorted(devices), telemetry, acceptance, self.config)
            # stored once per group and version, whichever monitor (one per collector of a group) sees it first:
            # only the one whose row went in reports it (and so rolls the group back)
            if verdict is not None and self.store.add_degraded(degraded_record(verdict, raised=time.time())):
                found.append(verdict)
        return found

    def mark(self, event: Degraded, action: str) -> None:
        """Record what was done about an event (``rollback``)."""
        self.store.set_degraded_action(event.model_id, event.version, action)


class FeedbackLoop:
    """Runs :meth:`FeedbackMonitor.check` every ``interval_s`` in a thread; with ``rollback`` (a function taking
    the devices, model id, version and reason: :meth:`edge.delivery.publisher.ModelPublisher.rollback`), a degraded
    group is rolled back to its previous version by a signed command. A group that degrades again on the version
    it was rolled back to (the drift is in its data, not in the new model) is held there (action ``held: ...``):
    rolled back once, never in a loop."""

    def __init__(
        self,
        monitor: FeedbackMonitor,
        *,
        rollback: Callable[..., None] | None = None,
        on_event: Callable[[Degraded], None] = lambda event: None,
    ) -> None:
        self.monitor = monitor
        self.rollback = rollback
        self.on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedge-feedback", daemon=True)

    def step(self) -> list[Degraded]:
        events = self.monitor.check()
        for event in events:
            self.on_event(event)
            if self.rollback is None:
                continue
            landed = self._rolled_back_to(event)
            if landed is not None:
                # the group runs this version because it was rolled back from a newer one: the degradation is not
                # the new model's, and the device keeps no older model to go to, so a person decides
                self.monitor.mark(event, f"held: rolled back here from v{landed}; not rolled back again")
                continue
            self.rollback(
                list(event.devices), model_id=event.model_id, from_version=event.version, reason=event.reason[:200]
            )
            self.monitor.mark(event, "rollback")
        return events

    def _rolled_back_to(self, event: Degraded) -> int | None:
        """The newer version this group was rolled back from onto ``event.version`` (``None`` if it was not)."""
        for earlier in reversed(degraded_events(self.monitor.store)):
            if (
                earlier["model_id"] == event.model_id
                and earlier["version"] > event.version
                and earlier["action"] == "rollback"
                and set(earlier["devices"]) & set(event.devices)
            ):
                return int(earlier["version"])
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.monitor.config.interval_s):
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - the collector keeps collecting whatever the check does
                _log.error("feedback: checking the fleet failed: %s", e)

    def start(self) -> FeedbackLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def event_dict(event: Degraded) -> dict[str, Any]:
    return asdict(event)
