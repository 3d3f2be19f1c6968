"""The run directory's one owner: its paths and readers, and the one atomic write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared_models.run_dir import RunDir, RunDirError, atomic_write, write_json

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_write_leaves_the_old_file_intact_and_no_temporary_file(tmp_path):
    path = write_json(tmp_path / "metrics.json", {"rounds": [1]})

    def failing_serializer(fh):
        fh.write(b'{"rounds": [1, 2')  # half written, then the serializer dies
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing_serializer)
    assert json.loads(path.read_text()) == {"rounds": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_value_json_cannot_hold_writes_nothing(tmp_path):
    path = write_json(tmp_path / "config.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_the_records_read_back(tmp_path):
    run = RunDir.of(tmp_path, "r-1")
    write_json(run.config, {"seed": 3})
    write_json(run.metrics, {"rounds": [{"round": 0, "central-accuracy": 0.1}]})
    assert run.exists() and run.run_id == "r-1"
    assert run.read_config() == {"seed": 3}
    assert run.read_metrics()[0]["central-accuracy"] == 0.1
    assert not run.is_finished() and not run.can_resume()
    assert run.missing(run.config, run.model, run.model_info) == ["model.pt", "model.json"]


def test_a_damaged_record_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text('{"rounds": [')
    with pytest.raises(RunDirError, match="metrics.json"):
        run.read_metrics()
    with pytest.raises(RunDirError, match="config.json"):
        run.read_config()


def test_run_dir_reads_paths_and_json_without_torch(tmp_path):
    write_json(tmp_path / "config.json", {"model": "digits-cnn"})
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from shared_models.run_dir import RunDir\n"
        "from shared_models.run_config import DEFAULT_RUN_CONFIG, mint_run_id\n"
        f"print(RunDir({str(tmp_path)!r}).read_config()['model'])\n"
        "assert 'flwr' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "digits-cnn"
