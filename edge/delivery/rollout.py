"""Staged rollout: a canary share of the fleet first, everyone else once the canaries report healthy, a rollback
command when they do worse than the version they ran before.

The decision (:func:`judge_canaries`) is a pure function of what the canaries reported; :class:`StagedRollout`
does the waiting and the publishing, reading the devices' reports from a :class:`FleetCollector`;
:func:`publish_rollout` is the whole of ``fedge publish`` (artifacts in, report out), callable without a subprocess.

A verdict without enough reports on either side fails closed: the rollout is ``held`` (the canaries keep the new
version, nobody else gets it) and the report says why. ``accept_no_baseline`` (``--accept-no-baseline``) judges the
canaries on their own error rate instead when there is no baseline; the report records that override.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.agent.protocol import BrokerAddress
from edge.delivery.acceptance_gate import AcceptanceGate, check_acceptance
from edge.delivery.client import ServerClient
from edge.delivery.collector import FleetCollector, FleetStore, VersionStats, open_fleet_store
from edge.delivery.errors import ArtifactError, RolloutError
from edge.delivery.keys import SigningKey
from edge.delivery.publisher import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EXPIRES_S,
    ModelPublisher,
    SignedModel,
    load_artifact,
    sign_artifact,
)


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout proceeds and what "healthy" means. Keyword-only; the defaults suit a small fleet."""

    #: share of the devices that get the new version first (0 or 1: everyone at once)
    canary_fraction: float = 0.1
    min_canaries: int = 1
    #: telemetry messages each canary must send on the new version before it is judged
    health_reports: int = 2
    #: the canaries' accuracy may be at most this much below the previous version's
    max_accuracy_drop: float = 0.02
    #: and their error rate at most this much above it
    max_error_rate_increase: float = 0.01
    #: without a previous version to compare with, the error rate may be at most this
    max_error_rate: float = 0.05
    #: a difference counts only beyond this many standard errors (the canaries see few samples: noise is large)
    noise_z: float = 2.0
    #: seconds to wait for devices to report an outcome of the update
    apply_timeout_s: float = 120.0
    #: seconds to wait for the canaries' telemetry on the new version
    health_timeout_s: float = 120.0
    #: telemetry messages the canaries must have sent on the previous version for a baseline (0: health_reports)
    min_baseline_reports: int = 0
    #: without such a baseline, judge the canaries on their own error rate instead of holding (recorded)
    accept_no_baseline: bool = False


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str
    #: not enough reports to judge: neither roll out nor roll back (fail closed)
    held: bool = False
    #: an override the verdict relied on (recorded in the rollout report)
    override: str = ""


def _noise(p1: float, n1: int, p2: float, n2: int, z: float) -> float:
    """``z`` standard errors of the difference of two proportions (p1 over n1 trials, p2 over n2)."""
    return z * math.sqrt(p1 * (1 - p1) / max(n1, 1) + p2 * (1 - p2) / max(n2, 1))


def judge_canaries(new: VersionStats, old: VersionStats | None, policy: RolloutPolicy, *, canaries: int = 1) -> Verdict:
    """Healthy when the canaries' accuracy and error rate on the new version are no worse than on the previous one,
    within the policy's margins plus sampling noise (``noise_z`` standard errors). Without labels, accuracy is
    not compared. Too few reports on the new version, or on the previous one (no baseline), hold the rollout."""
    if new.reports == 0:
        return Verdict(False, "the canaries sent no telemetry on the new version")
    needed = policy.health_reports * canaries
    if new.reports < needed:
        return Verdict(
            False,
            f"only {new.reports} of {needed} reports on the new version: not enough to judge, rollout held",
            held=True,
        )
    new_err = new.error_rate or 0.0
    baseline_needed = (policy.min_baseline_reports or policy.health_reports) * canaries
    if old is None or old.reports < baseline_needed:
        have = 0 if old is None else old.reports
        if not policy.accept_no_baseline:
            return Verdict(
                False,
                f"no baseline: {have} of {baseline_needed} reports on the previous version (was a collector "
                "running?); rollout held. Run `fedge fleet collect` while the previous version serves, or pass "
                "--accept-no-baseline to judge the canaries on their own error rate",
                held=True,
            )
        override = f"accept-no-baseline: judged without a baseline ({have} of {baseline_needed} reports)"
        if new_err > policy.max_error_rate:
            return Verdict(False, f"error rate {new_err:.3f} is above {policy.max_error_rate:.3f}", override=override)
        return Verdict(True, f"no baseline (accepted by override); error rate {new_err:.3f}", override=override)
    old_err = old.error_rate or 0.0
    n_new, n_old = new.inferences + new.errors, old.inferences + old.errors
    if new_err > old_err + policy.max_error_rate_increase + _noise(new_err, n_new, old_err, n_old, policy.noise_z):
        return Verdict(False, f"error rate {new_err:.3f} against {old_err:.3f} on the previous version")
    if new.accuracy is not None and old.accuracy is not None:
        noise = _noise(new.accuracy, new.labelled, old.accuracy, old.labelled, policy.noise_z)
        if new.accuracy < old.accuracy - policy.max_accuracy_drop - noise:
            return Verdict(False, f"accuracy {new.accuracy:.3f} against {old.accuracy:.3f} on the previous version")
        return Verdict(True, f"accuracy {new.accuracy:.3f} (previous {old.accuracy:.3f}), error rate {new_err:.3f}")
    return Verdict(True, f"error rate {new_err:.3f} (previous {old_err:.3f}); no labels to compare accuracy")


def choose_canaries(device_ids: list[str], fraction: float, min_canaries: int, *, salt: str = "") -> list[str]:
    """A stable choice: the devices whose hash (with ``salt``, e.g. the version) comes first."""
    if fraction <= 0 or fraction >= 1:
        return []
    count = min(len(device_ids), max(min_canaries, math.ceil(fraction * len(device_ids))))
    ranked = sorted(device_ids, key=lambda d: hashlib.sha256(f"{salt}/{d}".encode()).hexdigest())
    return sorted(ranked[:count])


@dataclass
class RolloutReport:
    model_id: str
    version: int
    status: str = "started"  # completed, rolled-back, held, aborted, incomplete, assigned
    devices: list[str] = field(default_factory=list)
    canaries: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    verdict: str = ""
    baseline: dict[str, Any] | None = None
    canary_stats: dict[str, Any] | None = None
    #: overrides of the policy's safety checks this rollout relied on (e.g. accept-no-baseline)
    overrides: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stats_dict(stats: VersionStats) -> dict[str, Any]:
    return {**asdict(stats), "accuracy": stats.accuracy, "error_rate": stats.error_rate}


class StagedRollout:
    """Roll signed models (one per format: the devices' runtimes pick) out to a fleet."""

    def __init__(
        self,
        *,
        publisher: ModelPublisher,
        collector: FleetCollector,
        models: dict[str, SignedModel],
        policy: RolloutPolicy | None = None,
        progress: Callable[[str], None] = lambda message: None,
        group: str = "",
    ) -> None:
        if not models:
            raise RolloutError("nothing to roll out")
        versions = {(m.manifest.model_id, m.manifest.version) for m in models.values()}
        if len(versions) != 1:
            raise RolloutError(f"the artifacts of one rollout must share model id and version, got {sorted(versions)}")
        self.publisher = publisher
        self.collector = collector
        self.store: FleetStore = collector.store
        self.models = models
        self.policy = policy or RolloutPolicy()
        self.progress = progress
        #: with a group, one manifest per format signed for the group, not one per device
        self.group = group
        (self.model_id, self.version) = versions.pop()

    def _model_for(self, device: dict[str, Any] | None) -> SignedModel | None:
        runtime = (device or {}).get("runtime")
        if runtime in self.models:
            return self.models[runtime]
        if runtime is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        return None

    def _poll_s(self, devices: int) -> float:
        """How often to read the store while waiting: each read covers the whole fleet (one query), so a large
        fleet is read less often, leaving the collector the CPU to write what arrives."""
        return min(0.5, 0.05 + devices / 40000)

    def _assign(self, device_ids: list[str], report: RolloutReport) -> list[str]:
        by_model: dict[str, list[str]] = {}
        assigned = []
        states = self.store.device_states()
        for d in device_ids:
            model = self._model_for(states.get(d))
            if model is None:
                report.rejected[d] = "no artifact for its runtime"
                continue
            by_model.setdefault(model.manifest.format, []).append(d)
            assigned.append(d)
        for fmt, devices in by_model.items():
            self.publisher.assign(self.models[fmt], devices, group=self.group)
        return assigned

    def _outcomes(self, store: FleetStore, devices: list[str], since: float) -> dict[str, dict[str, Any] | None]:
        """Each device's outcome of this version since ``since``: its last ``applied`` (of this version) or
        ``rejected`` event, else ``applied`` when its state already says it runs this version (a device that got
        it earlier), else None. Two queries for the whole fleet, whatever its size."""
        wanted = set(devices)
        found: dict[str, dict[str, Any]] = {}
        for e in store.events(since=since):  # oldest first: the last relevant one wins
            if e["device_id"] in wanted and (
                e["outcome"] == "rejected" or (e["outcome"] == "applied" and e["version"] == self.version)
            ):
                found[e["device_id"]] = e
        missing = [d for d in devices if d not in found]
        if missing:
            states = store.device_states()
            for d in missing:
                if (states.get(d) or {}).get("version") == self.version:
                    found[d] = {"outcome": "applied"}
        return {d: found.get(d) for d in devices}

    def _reported(self, store: FleetStore, canaries: list[str], since: float) -> bool:
        """Every canary sent ``health_reports`` telemetry messages on this version since ``since`` (one query)."""
        counts = store.report_counts(canaries, self.version, since)
        return len(counts) == len(canaries) and min(counts.values(), default=0) >= self.policy.health_reports

    def _rolled_back(self, store: FleetStore, devices: list[str], since: float) -> set[str]:
        wanted = set(devices)
        return {e["device_id"] for e in store.events(since=since) if e["outcome"] == "rolled-back"} & wanted

    def _wait_outcomes(self, devices: list[str], since: float, report: RolloutReport) -> None:
        """Wait until each device reported an outcome for this version; sort them into applied / rejected / missing."""
        self.collector.wait_until(
            lambda s: all(e is not None for e in self._outcomes(s, devices, since).values()),
            self.policy.apply_timeout_s,
            poll=self._poll_s(len(devices)),
        )
        for d, e in self._outcomes(self.store, devices, since).items():
            if e is None:
                report.missing.append(d)
            elif e["outcome"] == "applied":
                report.applied.append(d)
            else:
                report.rejected[d] = e["reason"]

    def run(self, device_ids: list[str] | None = None) -> RolloutReport:
        started = time.time()
        report = RolloutReport(self.model_id, self.version)
        devices = sorted(device_ids) if device_ids else [d["device_id"] for d in self.store.devices()]
        if not devices:
            raise RolloutError("no devices to roll out to: none has reported yet (start agents, or pass --devices)")
        report.devices = devices
        for fmt, model in self.models.items():
            self.progress(f"publishing {fmt} v{self.version}: {model.manifest.chunks} chunks")
            self.publisher.publish_chunks(model)

        canaries = choose_canaries(
            devices, self.policy.canary_fraction, self.policy.min_canaries, salt=str(self.version)
        )
        report.canaries = canaries
        chosen = set(canaries)
        rest = [d for d in devices if d not in chosen]
        if canaries:
            states = self.store.device_states()
            previous = {d: (states.get(d) or {}).get("version") for d in canaries}
            baseline_versions = {v for v in previous.values() if v is not None}
            baseline = None
            if len(baseline_versions) == 1:
                baseline = self.store.version_stats(canaries, baseline_versions.pop())
                report.baseline = _stats_dict(baseline)
            shown = ", ".join(canaries[:20]) + (f" and {len(canaries) - 20} more" if len(canaries) > 20 else "")
            self.progress(f"canaries ({len(canaries)}): {shown}")
            since = time.time()
            self._wait_outcomes(self._assign(canaries, report), since, report)
            if report.rejected or report.missing:
                report.status = "aborted"
                report.verdict = "canaries did not apply the update: " + ", ".join(
                    [f"{d}: {r}" for d, r in report.rejected.items()] + [f"{d}: no answer" for d in report.missing]
                )
                report.seconds = time.time() - started
                return report
            self.progress(f"waiting for {self.policy.health_reports} reports from each canary")
            # reports on the new version since the canaries were assigned (the ones the verdict reads): a report a
            # canary sent right after its swap counts, instead of waiting a whole report interval for the next one
            self.collector.wait_until(
                lambda s: self._reported(s, canaries, since),
                self.policy.health_timeout_s,
                poll=self._poll_s(len(canaries)),
            )
            new = self.store.version_stats(canaries, self.version, since=since)
            report.canary_stats = _stats_dict(new)
            verdict = judge_canaries(new, baseline, self.policy, canaries=len(canaries))
            report.verdict = verdict.reason
            if verdict.override:
                report.overrides.append(verdict.override)
            if verdict.held:
                self.progress(f"rollout held: {verdict.reason}")
                report.status = "held"
                report.seconds = time.time() - started
                return report
            if not verdict.healthy:
                self.progress(f"canaries unhealthy ({verdict.reason}): rolling back")
                since = time.time()
                self.publisher.rollback(
                    canaries, model_id=self.model_id, from_version=self.version, reason=verdict.reason[:200]
                )
                self.collector.wait_until(
                    lambda s: len(self._rolled_back(s, canaries, since)) == len(canaries),
                    self.policy.apply_timeout_s,
                    poll=self._poll_s(len(canaries)),
                )
                done = self._rolled_back(self.store, canaries, since)
                report.rolled_back = [d for d in canaries if d in done]
                for model in self.models.values():
                    self.publisher.clear_chunks(model.manifest)
                report.status = "rolled-back"
                report.seconds = time.time() - started
                return report
            self.progress(f"canaries healthy ({verdict.reason}): rolling out to {len(rest)} more")
        if rest:
            since = time.time()
            self._wait_outcomes(self._assign(rest, report), since, report)
        report.status = "completed" if not report.rejected and not report.missing else "incomplete"
        report.seconds = time.time() - started
        return report


# ------------------------------------------------------------------------------------------------ fedge publish


def sign_models(
    artifacts: Sequence[Path],
    key: SigningKey,
    *,
    model_id: str | None = None,
    version: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    expires_in_s: float = DEFAULT_EXPIRES_S,
    now: float | None = None,
) -> dict[str, SignedModel]:
    """Read the artifacts (one per format) and sign them as one version of one model: without a version anywhere,
    one clock reading for all of them; artifacts that disagree on the model id are refused."""
    loaded = [load_artifact(p, model_id=model_id, version=version) for p in artifacts]
    if not loaded:
        raise ArtifactError("no artifact to publish")
    if version is None and len({a.version for a in loaded}) > 1:
        clock = int(time.time() if now is None else now)
        loaded = [load_artifact(p, model_id=model_id, version=clock) for p in artifacts]
    formats = [a.format for a in loaded]
    if len(set(formats)) != len(formats):
        raise ArtifactError(f"one artifact per format, got {', '.join(formats)}")
    if len({a.model_id for a in loaded}) != 1:
        raise ArtifactError(
            f"the artifacts name different model ids ({sorted({a.model_id for a in loaded})}): pass --model-id"
        )
    return {a.format: sign_artifact(a, key, chunk_size=chunk_size, expires_in_s=expires_in_s, now=now) for a in loaded}


def wait_for_fleet(collector: FleetCollector, devices: Sequence[str], *, timeout: float, quiet_s: float = 0.5) -> None:
    """Wait until the fleet's retained states have arrived: every named device's, or, without names, until no new
    message came for ``quiet_s`` (retained states all come right after subscribing), ``timeout`` at most."""
    if devices:
        wanted = set(devices)
        collector.wait_until(lambda s: wanted <= s.device_states().keys(), timeout)
        return
    deadline = time.monotonic() + timeout
    last, changed = collector.received, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if collector.received != last:
            last, changed = collector.received, time.monotonic()
        elif time.monotonic() - changed >= quiet_s and collector.store.device_states():
            return


ONLINE_STATES = ("ready", "waiting", "updating")


def publish_rollout(
    models: dict[str, SignedModel],
    *,
    broker: BrokerAddress,
    key: SigningKey,
    db: Path | str,
    devices: Sequence[str] = (),
    group: str = "",
    policy: RolloutPolicy | None = None,
    no_wait: bool = False,
    ca_file: Path | None = None,
    fleet_timeout_s: float = 10.0,
    progress: Callable[[str], None] = lambda message: None,
    gate: AcceptanceGate | None = None,
) -> RolloutReport:
    """``fedge publish``: publish signed models and roll them out.

    With ``no_wait``: send the chunks, assign the one model to ``devices`` and return (status ``assigned``).
    Otherwise: listen to the fleet (the devices' retained states, ``fleet_timeout_s`` at most), target ``devices``
    or every online device, and run a :class:`StagedRollout`. With ``group``, each format's manifest is addressed
    to that device group and signed once, instead of once per device (what a large fleet needs). With ``gate``,
    nothing is published unless every artifact passed its acceptance test (or the gate's override is on, which the
    report's ``overrides`` record).
    """
    policy = policy or RolloutPolicy()
    first = next(iter(models.values())).manifest
    suffix = str(os.getpid())
    client = ServerClient(f"fedge-publish-{suffix}", broker, ca_file=ca_file, clean_session=True).connect()
    publisher = ModelPublisher(client, key, timeout=policy.apply_timeout_s)
    try:
        # before anything is published: a refused artifact leaves no retained chunk behind
        overrides = check_acceptance([m.artifact for m in models.values()], gate) if gate is not None else []
        for line in overrides:
            progress(line)
        if no_wait:
            if not devices:
                raise RolloutError("--no-wait needs --devices (without waiting, nobody is asked who is online)")
            if len(models) != 1:  # checked before anything is published: no stray retained chunks
                raise RolloutError(
                    "--no-wait assigns one artifact; for several formats, let the rollout match runtimes"
                )
            model = next(iter(models.values()))
            publisher.publish_chunks(model)
            publisher.assign(model, list(devices), group=group)
            return RolloutReport(
                first.model_id, first.version, status="assigned", devices=sorted(devices), overrides=overrides
            )
        collector = FleetCollector(
            broker,
            open_fleet_store(db),
            client_id=f"fedge-publish-collector-{suffix}",
            ca_file=ca_file,
            clean_session=True,
        ).start()
        try:
            wait_for_fleet(collector, devices, timeout=fleet_timeout_s)
            targets = list(devices) or sorted(
                d for d, row in collector.store.device_states().items() if row.get("state") in ONLINE_STATES
            )
            report = StagedRollout(
                publisher=publisher, collector=collector, models=models, policy=policy, progress=progress, group=group
            ).run(targets)
            report.overrides[:0] = overrides
            return report
        finally:
            collector.stop()
    finally:
        client.close()
