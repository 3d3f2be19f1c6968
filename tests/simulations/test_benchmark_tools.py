"""The tools the benchmarks share that are not measured themselves: the CPU limit the collectors benchmark puts on each
collector (a cgroup per process). These tests write to a stand-in cgroup tree in a temporary folder; the real one is
used by ``python -m simulations.benchmarks.mqtt_telemetry --collectors --collector-cpu CORES`` (its results say how
many cores each collector used: the limit)."""

import pytest

from simulations.benchmarks.common import CpuQuota
from simulations.benchmarks.mqtt_telemetry import main as telemetry_main


def test_a_cpu_limit_on_cgroup_v1_writes_the_quota_for_its_period(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    quota = CpuQuota("collector-0", 0.4, root=tmp_path)
    assert quota.path.parent == tmp_path / "cpu" and "collector-0" in quota.path.name
    assert (quota.path / "cpu.cfs_period_us").read_text() == "100000"
    assert (quota.path / "cpu.cfs_quota_us").read_text() == "40000"
    quota.add(4321)
    assert (quota.path / "cgroup.procs").read_text() == "4321"


def test_a_cpu_limit_on_cgroup_v2_enables_the_cpu_controller_and_writes_cpu_max(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    quota = CpuQuota("collector-1", 1.5, root=tmp_path)
    assert quota.path.parent == tmp_path
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (quota.path / "cpu.max").read_text() == "150000 100000"


def test_a_cpu_limit_without_a_cpu_controller_or_of_no_cores_is_refused_clearly(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    with pytest.raises(RuntimeError, match="no cgroup CPU controller.*run without the limit"):
        CpuQuota("c", 0.5, root=tmp_path)
    with pytest.raises(ValueError, match="more than 0 cores"):
        CpuQuota("c", 0, root=tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "cgroup.controllers"]  # nothing made


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--collector-cpu", "0.4"], "--collector-cpu goes with --collectors"),
        (["--collectors", "--collector-cpu", "0"], "more than 0 cores"),
    ],
)
def test_the_benchmark_refuses_a_cpu_limit_it_cannot_use(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        telemetry_main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
