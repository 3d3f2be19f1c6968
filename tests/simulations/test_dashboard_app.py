"""The dashboard's readers and web app without a browser (the browser tests are tests/integration/test_dashboard.py):
what the API returns for a run directory written by the run-dir module, access rules, and a run id that is a path."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from shared_models.run_dir import RunDir, write_json
from simulations.dashboard.app import create_app
from simulations.dashboard.data import DashboardData, DashboardError
from simulations.dashboard.server import check_bind, is_loopback

LOCAL = "http://127.0.0.1"


def _run(runs_dir, run_id="r1", *, rounds=2, total=5, finished=False) -> RunDir:
    run = RunDir.of(runs_dir, run_id)
    write_json(run.config, {"model": "digits-cnn", "num-server-rounds": total, "dp": True, "target-epsilon": 3.0})
    entries = [{"round": 0, "central-accuracy": 0.1}]
    entries += [{"round": r, "central-accuracy": 0.5 + r / 10, "epsilon-max": r * 0.5} for r in range(1, rounds + 1)]
    entries[-1]["failures"] = {"7": "node crashed"}
    write_json(run.metrics, {"rounds": entries})
    write_json(
        run.privacy,
        {
            "enabled": True,
            "target-epsilon": 3.0,
            "delta": 1e-5,
            "clients": {
                "0": {
                    "epsilon": 1.0,
                    "rounds": [1, 2],
                    "epsilons": [0.5, 1.0],
                    "refused-rounds": [3],
                    "last-refusal": "budget spent",
                }
            },
        },
    )
    if finished:
        run.model.write_bytes(b"x")
        write_json(run.model_info, {"model": "digits-cnn"})
    return run


def test_overview_follows_the_newest_run_and_reads_its_record(tmp_path):
    older = _run(tmp_path, "older", finished=True)
    an_hour_ago = time.time() - 3600
    for path in older.path.rglob("*"):  # written an hour before the other run: no race on the clock's resolution
        os.utime(path, (an_hour_ago, an_hour_ago))
    _run(tmp_path, "newer", rounds=3)
    overview = DashboardData(tmp_path).overview()
    assert [r["id"] for r in overview["runs"]][0] == "newer" and overview["selected"] == "newer"
    run = overview["run"]
    assert (run["rounds-done"], run["rounds-total"], run["status"]) == (3, 5, "running")
    assert [r["round"] for r in run["rounds"]] == [0, 1, 2, 3]
    assert run["refusals"] == [{"client": "0", "round": 3, "reason": "budget spent"}]
    assert run["failures"] == [{"round": 3, "node": "7", "reason": "node crashed"}]
    assert DashboardData(tmp_path).overview("older")["run"]["status"] == "finished"


def test_a_round_written_later_is_seen_on_the_next_read(tmp_path):
    run = _run(tmp_path, rounds=1)
    data = DashboardData(tmp_path)
    assert data.overview()["run"]["rounds-done"] == 1
    payload = json.loads(run.metrics.read_text())
    payload["rounds"].append({"round": 2, "central-accuracy": float("nan")})  # NaN: JSON cannot carry it
    write_json(run.metrics, payload)
    run_view = data.overview()["run"]
    assert run_view["rounds-done"] == 2 and run_view["rounds"][-1]["central-accuracy"] is None


@pytest.mark.parametrize("run_id", ["..", "../..", ".hidden", "a/b", "%2e%2e"])
def test_a_run_id_that_is_a_path_is_not_found(tmp_path, run_id):
    _run(tmp_path / "runs")
    (tmp_path / "config.json").write_text("{}")  # a "run" one level up, outside the runs directory
    assert DashboardData(tmp_path / "runs").run(run_id) is None
    client = TestClient(create_app(tmp_path / "runs"), base_url=LOCAL)
    assert client.get("/api/runs/" + quote(run_id, safe="")).status_code == 404  # one path segment


def test_app_answers_loopback_names_only_and_only_reads(tmp_path):
    _run(tmp_path)
    client = TestClient(create_app(tmp_path), base_url=LOCAL)
    assert client.get("/api/overview").json()["selected"] == "r1"
    assert client.get("/").status_code == 200 and "uPlot.iife.min.js" in client.get("/").text
    assert client.get("/static/uPlot.iife.min.js").status_code == 200
    assert client.post("/api/overview").status_code == 405
    assert TestClient(create_app(tmp_path), base_url="http://evil.example").get("/").status_code == 400
    assert client.get("/metrics").status_code == 404  # no fleet database yet: said so, not a crash


def test_token_gate(tmp_path):
    _run(tmp_path)
    token = "t" * 20
    client = TestClient(create_app(tmp_path, token=token), base_url="http://dashboard.example")
    assert client.get("/api/overview").status_code == 401
    assert client.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/overview", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    opened = client.get(f"/?token={token}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    assert client.get("/api/overview").status_code == 200  # the cookie set on the redirect


def test_bind_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.9.9.9")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")
    with pytest.raises(DashboardError, match="--token or FEDGE_UI_TOKEN"):
        check_bind("0.0.0.0", None)
    assert check_bind("0.0.0.0", "x" * 16) == "0.0.0.0"
