"""The node's join loop (client/node.py): retried while the SuperLink refuses, final on anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.node import NodeError, NodeSettings, join_federation

REFUSED = (1, "ERROR: Exit Code: 305\n")


def _settings(tmp_path: Path) -> NodeSettings:
    data = tmp_path / "table.csv"
    data.write_text("a,label\n1,0\n")
    return NodeSettings(superlink="127.0.0.1:9092", data_path=data, name="site-a", insecure=True)


def _join(tmp_path, results, attempts=4):
    calls, waits, said = [], [], []
    replies = iter(results)

    def run(command):
        calls.append(command)
        return next(replies)

    join_federation(
        _settings(tmp_path), ["flower-supernode"], run, join_attempts=attempts, sleep=waits.append, say=said.append
    )
    return calls, waits, said


def test_a_refused_node_tries_again_and_joins(tmp_path):
    calls, waits, said = _join(tmp_path, [REFUSED, REFUSED, (0, "bye\n")])
    assert len(calls) == 3 and waits == [20.0, 20.0]
    assert "attempt 2 of 4" in said[-1]


def test_a_node_refused_every_time_gives_up_naming_the_allow_list(tmp_path):
    with pytest.raises(NodeError, match="allow-list"):
        _join(tmp_path, [REFUSED] * 3, attempts=3)


def test_any_other_failure_is_final_and_not_retried(tmp_path):
    calls = []

    def run(command):
        calls.append(command)
        return 1, "ERROR: Exit Code: 302\n"

    with pytest.raises(NodeError, match="private key"):
        join_federation(_settings(tmp_path), ["x"], run, sleep=lambda s: pytest.fail("must not wait"))
    assert len(calls) == 1


def test_paths_reach_flower_supernode_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "n.key").write_text("x")
    (tmp_path / "t.csv").write_text("a,label\n1,0\n")
    settings = NodeSettings(
        superlink="h:1", data_path=Path("t.csv"), name="n", ca_certificate=Path("ca.crt"), auth_key=Path("n.key")
    )
    command = settings.command("flower-supernode")
    for flag in ("--root-certificates", "--auth-supernode-private-key"):
        assert Path(command[command.index(flag) + 1]).is_absolute()
    assert str(tmp_path / "t.csv") in settings.node_config()
