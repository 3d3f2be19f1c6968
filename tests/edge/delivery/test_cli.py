"""The edge commands of ``fedge``: every one explains itself with --help, and bad input is one clear line, exit
code 2, no traceback. (``fedge publish`` against a real broker is in tests/integration/test_edge_delivery.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.delivery.collector import FleetStore
from tests.edge.helpers import onnx_model

COMMANDS = [
    ("broker",),
    ("agent",),
    ("keygen",),
    ("publish",),
    ("demo",),
    ("fleet", "status"),
    ("fleet", "collect"),
]


def fedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True, timeout=120, env=None
    )


def test_every_edge_command_has_help():
    from typer.testing import CliRunner

    from simulations.cli import app

    runner = CliRunner()
    for command in COMMANDS:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output and len(result.output) > 300, command


def test_keygen_then_refuses_to_overwrite(tmp_path):
    first = fedge("keygen", str(tmp_path / "server"))
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "server.key").is_file() and (tmp_path / "server.pub").is_file()
    again = fedge("keygen", str(tmp_path / "server"))
    assert again.returncode == 2
    assert "exists" in again.stderr and "--force" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("model.pt", b"x", "must end in"),
        ("model.onnx", b"not a protobuf", "not an ONNX"),
    ],
)
def test_publish_refuses_a_bad_artifact_in_one_line(tmp_path, name, content, expected):
    assert fedge("keygen", str(tmp_path / "k")).returncode == 0
    (tmp_path / name).write_bytes(content)
    out = fedge("publish", str(tmp_path / name), "--broker", "mqtt://127.0.0.1:9", "--key", str(tmp_path / "k.key"))
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr


def test_publish_says_when_no_broker_answers(tmp_path):
    assert fedge("keygen", str(tmp_path / "k")).returncode == 0
    (tmp_path / "m.onnx").write_bytes(onnx_model())
    from edge.delivery.brokers import free_port

    out = fedge(
        "publish",
        str(tmp_path / "m.onnx"),
        "--broker",
        f"mqtt://127.0.0.1:{free_port()}",
        "--key",
        str(tmp_path / "k.key"),
    )
    assert out.returncode == 2
    assert "broker" in out.stderr and "Traceback" not in out.stderr


def test_fleet_status_prints_devices_and_losses(tmp_path):
    db = tmp_path / "fleet.db"
    store = FleetStore(db)
    state = {"type": "state", "device_id": "d1", "state": "ready", "runtime": "tflite", "session": "s"}
    state |= {"model_id": "digits", "version": 3, "previous_version": 2, "last_update": None}
    store.record("fedge/v1/devices/d1/state", json.dumps(state).encode())
    for seq in (1, 3):  # seq 2 never arrived
        telemetry = {"type": "telemetry", "device_id": "d1", "session": "s", "seq": seq, "inferences": 10}
        telemetry |= {"errors": 0, "labelled": 10, "correct": 9, "accuracy": 0.9, "latency_ms_p50": 0.25}
        store.record("fedge/v1/devices/d1/telemetry", json.dumps(telemetry).encode())
    store.close()
    out = fedge("fleet", "status", "--db", str(db))
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "d1" in line)
    assert "ready" in row and "tflite" in row and "0.900" in row and " 3 " in row
    assert "2 received, 1 lost" in out.stdout


def test_fleet_status_without_a_database(tmp_path):
    out = fedge("fleet", "status", "--db", str(tmp_path / "none.db"))
    assert out.returncode == 2 and "fedge fleet collect" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--feedback-min-reports", "0", "--feedback-min-reports must be a whole number of reports, at least 1"),
        ("--feedback-max-accuracy-drop", "1.5", "--feedback-max-accuracy-drop must be an accuracy drop from 0 to 1"),
        ("--feedback-interval", "0", "--feedback-interval must be a number of seconds above 0"),
    ],
)
def test_fleet_collect_refuses_a_bad_feedback_setting_before_it_connects(option, value, expected):
    from edge.delivery.brokers import free_port

    # no broker on that port: a setting checked only after connecting would fail on the broker instead
    out = fedge("fleet", "collect", "--broker", f"mqtt://127.0.0.1:{free_port()}", option, value)
    assert out.returncode == 2
    assert expected in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    assert "broker" not in out.stderr


def test_feedback_settings_are_checked_where_they_are_made():
    from edge.delivery.feedback import FeedbackConfig, FeedbackConfigError

    assert FeedbackConfig(min_reports=1, noise_z=0.0, max_histogram_distance=1.0).min_reports == 1
    for bad in ({"window_reports": 2.5}, {"noise_z": -1.0}, {"max_confidence_drop": float("nan")}):
        with pytest.raises(FeedbackConfigError, match="--feedback-"):
            FeedbackConfig(**bad)
