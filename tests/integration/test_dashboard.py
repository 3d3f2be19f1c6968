"""``fedge ui`` in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download),
its Prometheus endpoint, and its access rules.

The finished run is written with the real writers (the server's RunRecord and PrivacyLedger, the exporter's artifact
descriptions of real ONNX files run by onnxruntime, the collector's FleetStore fed protocol messages, the rollout's
RolloutReport); the live test watches a real Flower simulation. Screenshots go to tests/artifacts/ (git-ignored;
FEDGE_TEST_ARTIFACTS moves them) and their paths are printed. No assertion is on wall-clock time: every wait is for
something on the page, with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge.agent.protocol import events_topic, state_message, state_topic, telemetry_topic, update_event
from edge.delivery.collector import FleetStore
from edge.delivery.metrics import FleetMetrics, MetricsServer
from edge.delivery.rollout import RolloutReport
from shared_models.run_dir import RunDir, write_json
from simulations.dashboard.data import DashboardError
from simulations.dashboard.server import DashboardServer, check_bind

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("FEDGE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
RUN_ID = "digits-dp-20260101-120000-beef"
DEVICES = {"dev-01": "onnx", "dev-02": "tflite", "dev-03": "onnx", "dev-04": "tflite"}
TOKEN = "test-token-0123456789abcdef"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - .ci/run installs it ([dev])
    sync_playwright = None


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.skip('playwright is not installed: pip install -e ".[dev]"')
    if not CHROMIUM.is_file():
        pytest.skip("/usr/bin/chromium is not installed: apt-get install chromium (.ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.fedge_errors = errors  # a test that provokes errors on purpose takes them off this list
    yield pg
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def _screenshot(pg, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _write_run(runs_dir: Path) -> RunDir:
    """A finished 3-round DP run with artifacts and a fleet, written by the writers the pipeline uses."""
    import torch

    from server.ledger import PrivacyLedger
    from server.run_record import RunRecord

    run = RunDir.of(runs_dir, RUN_ID)
    config = {"model": "digits-cnn", "dataset": "digits", "partitioner": "iid", "strategy": "fedavg"}
    config |= {"num-server-rounds": 3, "dp": True, "target-epsilon": 3.0, "target-delta": 1e-5}
    record = RunRecord(run.path, config=config, model_info={"model": "digits-cnn", "classes": 10})
    ledger = PrivacyLedger(3.0, 1e-5)
    record.add_round({"round": 0, "central-loss": 2.3, "central-accuracy": 0.1}, ledger)
    for r, acc in ((1, 0.62), (2, 0.81), (3, 0.9)):
        for cid in ("0", "1", "2"):
            if cid == "2" and r == 3:
                ledger.record_refusal(cid, r, 2.9, "budget: round 3 would spend ε=3.4 > 3.0")
            else:
                ledger.record_training(cid, r, 0.95 * r)
        refused = 1 if r == 3 else 0
        record.add_round(
            {
                "round": r,
                "central-accuracy": acc,
                "central-loss": 1.0 / r,
                "clients-sampled": 3,
                "clients-trained": 3 - refused,
                "clients-refused": refused,
                "clients-failed": 0,
                "failures": {},
                "epsilon-max": ledger.max_epsilon,
                "epsilon-mean": ledger.mean_epsilon,
                "seconds": 1.5,
            },
            ledger,
        )
    record.save_final({"w": torch.zeros(1)})
    _write_artifacts(run)
    _write_fleet(run)
    return run


def _write_artifacts(run: RunDir) -> None:
    from edge.export.artifact import describe_artifact, write_description
    from edge.export.runtime import measure_latency, open_artifact
    from edge.export.verify import compare_logits
    from tests.edge.helpers import digits_split, onnx_model

    _, _, x, y = digits_split()
    x = x.reshape(-1, 1, 8, 8)
    run.artifacts.mkdir(parents=True, exist_ok=True)
    reference = None
    for variant, precision in (("fp32", "fp32"), ("int8", "int8")):
        path = run.artifacts / f"{variant}.onnx"
        path.write_bytes(onnx_model())
        runner = open_artifact(path)
        logits = np.concatenate([runner.run(x[i : i + 1]) for i in range(len(x))])  # the graph takes batch 1
        reference = logits if reference is None else reference
        metrics = {**compare_logits(logits, reference, y).as_dict(), "agreement-with-original": 1.0}
        metrics["latency-ms"] = measure_latency({"a": runner.single_call(x[:1])}, runs=20, warmup=5)["a"] * 1e3
        description = describe_artifact(
            path,
            runner=runner,
            variant=variant,
            precision=precision,
            model="digits-logreg",
            parameters=650,
            nonzero_parameters=650,
            quantization={},
            compression=None,
            metrics=metrics,
            source={"run-id": RUN_ID},
        )
        write_description(description, path)


def _write_fleet(run: RunDir) -> None:
    store = FleetStore(run.edge / "fleet.db")
    _record_fleet(store)
    store.close()
    first = RolloutReport("digits-cnn", 1, status="completed", devices=sorted(DEVICES), seconds=2.1)
    first.applied = sorted(DEVICES)
    second = RolloutReport("digits-cnn", 2, status="incomplete", devices=sorted(DEVICES), seconds=6.4)
    second.canaries = ["dev-02"]
    second.applied = ["dev-01", "dev-02", "dev-03"]
    second.rejected = {"dev-04": "bad-signature"}
    second.verdict = "accuracy 0.906 (previous 0.898), error rate 0.000"
    write_json(run.edge / "rollouts.json", [first.to_dict(), second.to_dict()])
    summary = {"model_id": "digits-cnn", "devices": DEVICES, "rollouts": [first.to_dict(), second.to_dict()]}
    write_json(run.edge / "demo.json", summary)  # what the demo writes last


def _record_fleet(store) -> None:
    """What the four devices of DEVICES said (states, update events, 8 telemetry reports each), into ``store``: a
    FleetStore or a PostgresFleetStore, as a collector writes them."""
    now = time.time()

    def send(topic: str, message: dict) -> None:
        assert store.record(topic, json.dumps(message).encode()) is not None, message

    for i, (device, runtime) in enumerate(sorted(DEVICES.items())):
        version = 1 if device == "dev-04" else 2  # dev-04 refused v2
        session = f"s{i}"
        outcome = "rejected" if version == 1 else "applied"
        reason = "bad-signature" if version == 1 else ""
        update = {"outcome": outcome, "version": 2, "reason": reason}
        send(
            state_topic(device),
            state_message(
                device_id=device,
                state="ready",
                runtime=runtime,
                session=session,
                ts=now,
                model_id="digits-cnn",
                version=version,
                previous_version=1 if version == 2 else None,
                last_update=update,
            ),
        )
        event = update_event(
            device_id=device,
            session=session,
            ts=now,
            outcome=outcome,
            reason=reason,
            detail="",
            model_id="digits-cnn",
            version=2,
            running_version=version,
        )
        send(events_topic(device), event)
        for seq in range(1, 9):
            send(
                telemetry_topic(device),
                {
                    "type": "telemetry",
                    "device_id": device,
                    "session": session,
                    "seq": seq,
                    "ts": now - 10 + seq,
                    "model_id": "digits-cnn",
                    "version": version,
                    "runtime": runtime,
                    "inferences": 32,
                    "errors": 0,
                    "labelled": 32,
                    "correct": 28 + (seq + i) % 4,
                    "accuracy": (28 + (seq + i) % 4) / 32,
                    "latency_ms_p50": 0.05 + 0.01 * i,
                    "latency_ms_p95": 0.09 + 0.01 * i,
                    "mean_confidence": 0.9,
                },
            )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    run = _write_run(runs_dir)
    with DashboardServer(runs_dir, port=0, poll_ms=500) as server:
        yield server, run


def _wait_text(pg, selector: str, predicate, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = pg.locator(selector).first.inner_text()
        if predicate(text):
            return text
        pg.wait_for_timeout(100)
    raise AssertionError(f"{selector} never matched; last text: {text!r}")


# ------------------------------------------------------------------------------------------------------ tests


def test_page_shows_the_run_its_charts_ledger_artifacts_and_every_device(page, finished):
    server, run = finished
    page.goto(server.url)
    _wait_text(page, "[data-testid=run-title]", lambda t: t == RUN_ID)
    assert _wait_text(page, "[data-testid=round-count]", lambda t: t.startswith("3")) == "3 / 3"
    assert page.locator("[data-testid=run-status]").inner_text().lower() == "finished"
    assert page.locator("[data-testid=accuracy]").inner_text() == "0.900"
    # both charts drew (uPlot renders to a canvas), with one point per round
    page.locator("#chart-accuracy canvas").wait_for()
    page.locator("#chart-epsilon canvas").wait_for()
    assert page.evaluate("window.fedgeDashboard.last.run.rounds.length") == 4
    # the ledger: one row per client, the refusal named
    ledger = page.locator("[data-testid=ledger] tbody tr")
    assert ledger.count() == 3
    assert "3" in page.locator("[data-testid=ledger] tr[data-client='2']").inner_text()
    assert "refused" in page.locator("[data-testid=incidents]").inner_text()
    assert "client 2 in round 3" in page.locator("[data-testid=incidents]").inner_text()
    # the artifacts, with sizes and latency against fp32 as their descriptions say
    rows = page.locator("[data-testid=artifacts] tbody tr")
    assert rows.count() == 2
    for name in ("fp32.onnx", "int8.onnx"):
        described = json.loads((run.artifacts / f"{name}.json").read_text())
        text = page.locator(f"tr[data-artifact='{name}']").inner_text()
        assert f"{described['size-bytes'] / 1024:.1f} KiB" in text
        assert f"{described['metrics']['accuracy']:.4f}" in text
    run_shot = _screenshot(page, "dashboard-run")

    page.locator("[data-testid=tab-fleet]").click()
    page.locator("[data-testid=page-fleet]").wait_for(state="visible")
    store = FleetStore(run.edge / "fleet.db", read_only=True)
    expected = {d["device_id"]: d for d in store.devices()}
    store.close()
    assert sorted(expected) == sorted(DEVICES)
    _wait_text(page, "[data-testid=fleet-count]", lambda t: t == str(len(DEVICES)))
    for device, row in expected.items():
        cells = page.locator(f"[data-testid=devices] tr[data-device='{device}'] td")
        assert cells.nth(0).inner_text() == device
        assert cells.nth(2).inner_text() == DEVICES[device]
        assert cells.nth(4).inner_text() == str(row["version"]), device
    assert "bad-signature" in page.locator("[data-testid=devices] tr[data-device='dev-04']").inner_text()
    page.locator("#chart-fleet-accuracy canvas").wait_for()
    rollouts = page.locator("[data-testid=rollouts]").inner_text()
    assert "digits-cnn v2" in rollouts and "dev-04: bad-signature" in rollouts and "incomplete" in rollouts.lower()
    fleet_shot = _screenshot(page, "dashboard-fleet")
    assert run_shot.stat().st_size > 10_000 and fleet_shot.stat().st_size > 10_000


def test_round_count_advances_while_a_simulation_runs_without_a_reload(page, tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    rounds = 3
    with DashboardServer(runs_dir, port=0, poll_ms=500) as server:
        page.goto(server.url)
        page.locator("[data-testid=live][data-state=live]").wait_for()
        page.evaluate("window.__sameDocument = true")
        log = (tmp_path / "simulate.log").open("wb")
        sim = subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", "simulate", "-c", "digits-dp", "-n", "2", "-r", str(rounds)]
            + ["--runs-dir", str(runs_dir), "--set", "progress=false", "--set", "local-epochs=1"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"},
        )
        seen: list[int] = []
        try:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                value = page.evaluate(
                    "() => { const el = document.querySelector('[data-testid=round-count]');"
                    " return el && el.dataset.rounds !== undefined ? parseInt(el.dataset.rounds, 10) : null; }"
                )
                if value is not None and (not seen or seen[-1] != value):
                    seen.append(value)
                    if value == rounds // 2 + 1:
                        _screenshot(page, "dashboard-live")
                if seen and seen[-1] == rounds:
                    break
                if sim.poll() is not None and sim.returncode != 0:
                    break
                page.wait_for_timeout(200)
        finally:
            if sim.poll() is None:
                sim.terminate()
                try:
                    sim.wait(30)
                except subprocess.TimeoutExpired:
                    sim.kill()
            log.close()
        output = (tmp_path / "simulate.log").read_text(errors="replace")[-3000:]
        assert seen and seen[-1] == rounds, f"round counts seen on the page: {seen}; simulation output:\n{output}"
        assert len(seen) >= 2 and seen == sorted(seen), f"the count must advance on the page: {seen}"
        assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        assert page.evaluate("window.fedgeDashboard.polls") > len(seen)
        run_id = page.locator("[data-testid=run-title]").inner_text()
        assert (runs_dir / run_id / "metrics.json").is_file()
        page.goto("about:blank")  # stop its polls before the server stops: a refused poll would log an error


def _scrape(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def _by_version(families: dict) -> dict:
    samples = families["fedge_fleet_devices_by_version"].samples
    return {(s.labels["model_id"], s.labels["version"]): s.value for s in samples}


def test_prometheus_metrics_parse_and_match_the_fleet_table(finished):
    server, run = finished
    families = _scrape(server.url + "metrics")
    store = FleetStore(run.edge / "fleet.db", read_only=True)
    devices = store.devices()
    sequence = store.sequence_report()
    store.close()

    by_state = {s.labels["state"]: s.value for s in families["fedge_fleet_devices"].samples}
    assert sum(by_state.values()) == len(devices) == len(DEVICES)
    for state in {d["state"] for d in devices}:
        assert by_state[state] == sum(1 for d in devices if d["state"] == state)
    assert _by_version(families) == {("digits-cnn", "2"): 3, ("digits-cnn", "1"): 1}
    received = families["fedge_fleet_telemetry_received"].samples[0].value
    assert received == sequence["received"] == 8 * len(DEVICES)
    outcomes = {
        (s.labels["outcome"], s.labels["reason"]): s.value for s in families["fedge_fleet_update_outcomes"].samples
    }
    assert outcomes == {("applied", ""): 3, ("rejected", "bad-signature"): 1}
    rollouts = {s.labels["status"]: s.value for s in families["fedge_fleet_rollouts"].samples}
    assert rollouts == {"completed": 1, "incomplete": 1}
    latency = [s for s in families["fedge_fleet_inference_latency_ms"].samples if s.labels["quantile"] == "0.5"]
    assert {s.labels["device_id"] for s in latency} == set(DEVICES)

    # the collector's own endpoint (fedge fleet collect --metrics-port) says the same
    store = FleetStore(run.edge / "fleet.db", read_only=True)
    metrics = MetricsServer(FleetMetrics(store), port=0)
    try:
        again = _scrape(metrics.url)
    finally:
        metrics.stop()
        store.close()
    assert {s.labels["state"]: s.value for s in again["fedge_fleet_devices"].samples} == by_state


def test_page_and_metrics_follow_a_postgres_fleet_and_never_show_its_password(page, postgres_url, tmp_path):
    """``fedge ui --fleet postgresql://...``: the database a group of collectors writes, on a real PostgreSQL server
    (trust authentication on loopback: the password in the URL is not needed, only never to be shown)."""
    from edge.delivery.postgres_store import PostgresFleetStore

    secret = "s3cret-pw"
    url = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    assert secret in url
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with DashboardServer(runs_dir, url, port=0, poll_ms=300) as server:
        # no collector has created the fleet's tables yet: an empty fleet, and the page says why
        page.goto(server.url)
        page.locator("[data-testid=tab-fleet]").click()
        page.locator("[data-testid=page-fleet]").wait_for(state="visible")
        source = _wait_text(page, "#fleet-source", lambda t: "no collector has written" in t)
        assert "postgresql://postgres:***@127.0.0.1" in source
        assert sum(s.value for s in _scrape(server.url + "metrics")["fedge_fleet_devices"].samples) == 0

        # a collector of the group writes the four devices' messages: the open page follows without a reload
        store = PostgresFleetStore(url)
        try:
            _record_fleet(store)
            expected = {d["device_id"]: d for d in store.devices()}
            _wait_text(page, "[data-testid=fleet-count]", lambda t: t == str(len(DEVICES)))
            for device, row in expected.items():
                cells = page.locator(f"[data-testid=devices] tr[data-device='{device}'] td")
                assert cells.nth(2).inner_text() == DEVICES[device]
                assert cells.nth(4).inner_text() == str(row["version"]), device
            assert "bad-signature" in page.locator("[data-testid=devices] tr[data-device='dev-04']").inner_text()
            source = page.locator("#fleet-source").inner_text()
            assert "no collector" not in source and "postgresql://postgres:***@127.0.0.1" in source
            assert secret not in page.content()
            with urllib.request.urlopen(server.url + "api/fleet", timeout=10) as response:
                fleet = json.loads(response.read())
            assert secret not in json.dumps(fleet)
            assert fleet["sequence"] == {"received": 8 * len(DEVICES), "lost": 0, "duplicates": 0}
            _screenshot(page, "dashboard-fleet-postgres")

            # the dashboard's /metrics and the collector's own endpoint read the same database
            assert _by_version(_scrape(server.url + "metrics")) == {("digits-cnn", "2"): 3, ("digits-cnn", "1"): 1}
            own = MetricsServer(FleetMetrics(store), port=0)
            try:
                families = _scrape(own.url)
            finally:
                own.stop()
            assert _by_version(families) == {("digits-cnn", "2"): 3, ("digits-cnn", "1"): 1}
            assert families["fedge_fleet_telemetry_received"].samples[0].value == 8 * len(DEVICES)
        finally:
            store.close()
        page.goto("about:blank")


def test_a_postgres_fleet_that_cannot_be_reached_is_one_clear_error(tmp_path):
    from simulations.dashboard.server import serve

    with pytest.raises(
        DashboardError, match=r"cannot open the fleet database postgresql://fleet:\*\*\*@127\.0\.0\.1:1/"
    ) as e:
        serve(tmp_path, "postgresql://fleet:hunter2@127.0.0.1:1/fleet", port=0)
    assert "hunter2" not in str(e.value) and "--fleet" in str(e.value)


def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        with pytest.raises(DashboardError, match="without an access token"):
            DashboardServer(tmp_path, host=host, port=0)
    with pytest.raises(DashboardError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    assert check_bind("0.0.0.0", TOKEN) == "0.0.0.0"
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "ui", "--runs", str(tmp_path), "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "FEDGE_UI_TOKEN"},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "without an access token" in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_with_a_token_every_request_needs_it(page, finished):
    _, run = finished
    with DashboardServer(run.path.parent, port=0, token=TOKEN, poll_ms=500) as server:
        for path in ("", "api/overview", f"api/runs/{RUN_ID}", "api/fleet", "metrics", "static/dashboard.js"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(server.url + path, timeout=10)
            assert refused.value.code == 401, path
            wrong = urllib.request.Request(server.url + path, headers={"Authorization": "Bearer not-the-token"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(wrong, timeout=10)
            assert refused.value.code == 401, path
            right = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(right, timeout=10) as response:
                assert response.status == 200, path
        # a browser opens ?token= once; the cookie it gets carries the page's polls
        page.goto(server.url + f"?token={TOKEN}")
        assert "token" not in page.url
        _wait_text(page, "[data-testid=run-title]", lambda t: t == RUN_ID)
        assert page.evaluate("fetch('/api/overview').then(r => r.status)") == 200
        page.context.clear_cookies()
        assert page.evaluate("fetch('/api/overview').then(r => r.status)") == 401
        page.locator("[data-testid=live][data-state=offline]").wait_for()
        assert "401" in page.locator("[data-testid=live]").inner_text()
        page.goto("about:blank")  # stop its polls first: each would log another (provoked) 401 before teardown
        page.fedge_errors[:] = [e for e in page.fedge_errors if "status of 401" not in e]


def test_read_only_and_loopback_names_only(finished):
    server, _ = finished
    post = urllib.request.Request(server.url + "api/overview", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 405
    rebound = urllib.request.Request(server.url + "api/overview", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rebound, timeout=10)
    assert refused.value.code == 400
    for bad in ("..", "..%2F..%2Fetc", "%2E%2E"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + f"api/runs/{bad}", timeout=10)
        assert refused.value.code == 404
    with urllib.request.urlopen(server.url, timeout=10) as response:
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
