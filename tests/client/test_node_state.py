"""A node's privacy state survives a restart; a node that cannot take part says why; the node's settings."""

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.config import parse_config_args

from client import privacy
from client.client_app import _reply, train_locally
from client.config import ClientConfig, PrivacyConfig
from client.errors import ClientError
from client.node import NodeError, NodeSettings, explain_exit, flower_exit_code
from client.state_file import PERSISTED_KEYS, restore_state, save_state, state_file
from shared_models.errors import SchemaMismatchError
from shared_models.federation import FederatedData
from shared_models.models import build_model
from shared_models.run_config import DEFAULT_RUN_CONFIG

pytestmark = pytest.mark.usefixtures("task_identity")


def test_persisted_keys_are_the_privacy_modules():
    assert set(PERSISTED_KEYS) == {privacy.STATE_KEY, privacy.CALIBRATION_KEY}


def test_accountant_survives_a_restart_of_the_node(tmp_path, data_dir):
    data = FederatedData(dataset="csv", partitioner="natural", label_column="13", csv_header=False, label_binarize_at=1)
    config = ClientConfig(
        model="tabular-mlp",
        data=data,
        partition_id=0,
        num_partitions=1,
        node_data_path=str(data_dir / "processed.va.data"),
        local_epochs=1,
        batch_size=32,
        learning_rate=0.1,
        momentum=0.0,
        privacy=PrivacyConfig(target_epsilon=50, noise_multiplier=1.0, planned_rounds=3),
        device=__import__("torch").device("cpu"),
        state_dir=str(tmp_path),
        run_key="run/1",
    )
    local = data.client_train_set(0, 1, node_data_path=config.node_data_path)
    arrays = ArrayRecord(build_model("tabular-mlp", input_shape=local.input_shape, num_classes=2).state_dict())
    path = state_file(config.state_dir, config.run_key)
    assert path.parent.name == "run_1"
    epsilons = []
    for server_round in (1, 2):
        state = RecordDict()  # a restarted node: Flower's in-memory state is gone
        restore_state(state, path)
        reply = train_locally(config, arrays, ConfigRecord({"server-round": server_round}), state)
        save_state(state, path)
        epsilons.append(reply["metrics"]["epsilon"])
    assert epsilons[1] > epsilons[0] * 1.2, "the second round's ε is cumulative, not a fresh accountant's"


def test_unreadable_state_is_refused_rather_than_reset(tmp_path):
    path = state_file(tmp_path, "r")
    path.parent.mkdir(parents=True)
    path.write_text("{torn")
    with pytest.raises(ClientError, match="Refusing to train"):
        restore_state(RecordDict(), path)


def test_a_node_that_cannot_take_part_replies_with_the_reason():
    msg = Message(content=RecordDict(), dst_node_id=5, message_type="train")

    def work():
        raise SchemaMismatchError("node.csv has 13 columns but the federation's schema has 14")

    reply = _reply(msg, work)
    assert reply.has_error() and "SchemaMismatchError" in reply.error.reason and "13 columns" in reply.error.reason
    assert not _reply(msg, lambda: RecordDict()).has_error()


def test_node_config_is_what_flower_parses(tmp_path):
    data = tmp_path / "my data.csv"
    data.write_text("a,label\n1,0\n")
    settings = NodeSettings(
        superlink="127.0.0.1:9092", data_path=data, name="hospital-a", device="cpu", state_dir=tmp_path, insecure=True
    )
    parsed = parse_config_args([settings.node_config()])
    assert parsed == {
        "data-path": str(data.resolve()),
        "device": "cpu",
        "node-name": "hospital-a",
        "state-dir": str(tmp_path.resolve()),
    }
    assert "--insecure" in settings.command("flower-supernode")


def test_node_settings_refuse_what_would_fail_later(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n")
    with pytest.raises(NodeError, match="does not exist"):
        NodeSettings(superlink="h:1", data_path=tmp_path / "none.csv", name="n", insecure=True)
    with pytest.raises(NodeError, match="CA certificate"):
        NodeSettings(superlink="h:1", data_path=data, name="n")
    with pytest.raises(NodeError, match="device"):
        NodeSettings(superlink="h:1", data_path=data, name="n", device="tpu", insecure=True)


def test_refused_node_is_told_about_the_allow_list(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n")
    settings = NodeSettings(superlink="h:1", data_path=data, name="n", insecure=True)
    code = flower_exit_code("ERROR : Exit Code: 305\nFailed to activate SuperNode.", default=1)
    assert code == 305 and "allow-list" in explain_exit(code, settings)
    assert flower_exit_code("no code here", default=1) == 1


def test_simulated_natural_nodes_take_their_file_from_the_run_config():
    from flwr.app import Context

    from client.errors import ClientConfigError

    run = {**DEFAULT_RUN_CONFIG, "dataset": "csv", "partitioner": "natural", "node-data-paths": "a.csv, b.csv"}

    def ctx(node):
        return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run)

    assert ClientConfig.from_context(ctx({"partition-id": 1, "num-partitions": 2})).node_data_path == "b.csv"
    assert ClientConfig.from_context(ctx({"data-path": "/own.csv"})).node_data_path == "/own.csv"
    with pytest.raises(ClientConfigError, match="lists 2 files"):
        ClientConfig.from_context(ctx({"partition-id": 2, "num-partitions": 3}))


def test_epsilon_after_round_is_the_accountants_own():
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.1, 20)]
    before = list(accountant.history)
    plan = privacy.plan_round(
        PrivacyConfig(noise_multiplier=1.1, target_epsilon=50),
        accountant,
        num_examples=100,
        batch_size=10,
        local_epochs=2,
    )
    for _ in range(plan.steps):  # what Opacus records, one optimizer step at a time
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    reused = privacy.epsilon_after_round(accountant, plan, before, 1e-5)
    assert reused == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)  # one step more than planned
    assert privacy.epsilon_after_round(accountant, plan, before, 1e-5) == accountant.get_epsilon(1e-5) > reused


def test_a_node_state_write_that_fails_keeps_the_epsilon_already_spent(tmp_path):
    path = state_file(tmp_path, "run-1")
    spent = RecordDict({"dp-accountant": ConfigRecord({"history": "[[1.1, 0.01, 40]]"})})
    save_state(spent, path)
    torn = RecordDict(
        {
            "dp-accountant": ConfigRecord({"history": "[[1.1, 0.01, 80]]"}),
            "dp-calibration": ConfigRecord({"blob": b"\x00"}),
        }
    )
    with pytest.raises(TypeError):
        save_state(torn, path)  # the calibration record cannot be written: nothing is
    restored = RecordDict()
    restore_state(restored, path)
    assert dict(restored["dp-accountant"]) == {"history": "[[1.1, 0.01, 40]]"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]
