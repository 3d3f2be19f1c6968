"""The acceptance test of the exact artifact bytes on a node (``query.accept``): the node checks every file's sha256
against the server's, runs the files with the device runtimes on its own table, and its accuracies are the ones the
in-process acceptance measures on the same samples. Every refusal is tested as the attack it stops, ending with the
good message answered."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message

from client.client_app import ACCEPT_ACTION, accept, accept_on_node
from client.config import ClientConfig, PrivacyConfig
from client.errors import AcceptanceOnNodeError
from edge.export.acceptance import GLOBAL_MODEL, Site, accept_artifacts
from shared_models.federation import FederatedData
from shared_models.run_config import DEFAULT_RUN_CONFIG
from shared_models.training import predict
from tests.client.heart import (
    HEART,
    acceptance_content,
    heart_model,
    mlp_onnx,
    narrow_table,
    node_context,
    write_artifact,
)

pytest.importorskip("onnxruntime")

MAX_SAMPLES = 120  # below the Hungarian table's 294 rows: the seeded subset must be the same on both paths
SEED = 3


def _config(data_dir) -> ClientConfig:
    return ClientConfig(
        model="tabular-mlp",
        data=FederatedData.from_run_config({**DEFAULT_RUN_CONFIG, **HEART}),
        partition_id=0,
        num_partitions=1,
        node_data_path=str(data_dir / "processed.hungarian.data"),
        node_name="hungarian",
        local_epochs=1,
        batch_size=32,
        learning_rate=0.1,
        momentum=0.0,
        privacy=PrivacyConfig(enabled=False),
        device=torch.device("cpu"),
    )


def _content(files, **kwargs):
    return acceptance_content(heart_model(), files, max_samples=MAX_SAMPLES, seed=SEED, **kwargs)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    model = heart_model()
    return {"fp32.onnx": mlp_onnx(model), "biased.onnx": mlp_onnx(model, bias_shift=2.0)}


def test_node_accuracies_equal_the_in_process_acceptance_on_the_same_samples(tmp_path, data_dir, files):
    config, model = _config(data_dir), heart_model()
    reply = accept_on_node(config, _content(files))
    metrics, site = reply["metrics"], reply["client"]["site"]
    assert site == "hungarian" and metrics["num-examples"] == MAX_SAMPLES

    # the in-process path on the samples this node took: the same seeded subset of the same table
    data = config.data.client_train_set(0, 1, node_data_path=config.node_data_path).with_classes(2)
    samples = data.sample(MAX_SAMPLES, seed=SEED)
    assert len(samples) < len(data)
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name, blob in files.items():
        write_artifact(folder, name, blob)
    report = accept_artifacts(
        folder, [Site(site, samples.x, samples.y)], global_model=lambda x: predict(model, x[None, ...])[0]
    )
    assert report["reference-accuracy"][site] == metrics[f"accuracy.{GLOBAL_MODEL}"]
    for row in report["artifacts"]:
        assert row["sites"][site]["accuracy"] == metrics[f"accuracy.{row['file']}"]
    # the exported float model is the global model, one sample at a time; the biased one is not
    assert metrics["accuracy.fp32.onnx"] == metrics[f"accuracy.{GLOBAL_MODEL}"]
    assert metrics["accuracy.biased.onnx"] != metrics["accuracy.fp32.onnx"]


def test_rejects_artifact_bytes_that_differ_from_the_servers_sha256(data_dir, files):
    config = _config(data_dir)
    flipped = bytearray(files["biased.onnx"])
    flipped[len(flipped) // 2] ^= 0x01
    tampered = {**files, "biased.onnx": bytes(flipped)}
    with pytest.raises(AcceptanceOnNodeError, match=r"biased\.onnx: bytes differ from the sha256 the server sent"):
        accept_on_node(config, _content(tampered, sha256=files))
    # a file the server described but did not send
    with pytest.raises(AcceptanceOnNodeError, match=r"biased\.onnx: the server described it but sent no bytes"):
        accept_on_node(config, _content({"fp32.onnx": files["fp32.onnx"]}, sha256=files))
    # the same message with the good bytes is answered
    reply = accept_on_node(config, _content(files))
    assert set(reply["metrics"]) >= {"accuracy.fp32.onnx", "accuracy.biased.onnx"}


@pytest.mark.usefixtures("task_identity")
def test_the_handler_replies_with_an_error_naming_the_site_and_file_then_answers_the_good_message(data_dir, files):
    flipped = bytearray(files["fp32.onnx"])
    flipped[-1] ^= 0xFF
    bad = Message(
        _content({**files, "fp32.onnx": bytes(flipped)}, sha256=files),
        dst_node_id=7,
        message_type=f"query.{ACCEPT_ACTION}",
    )
    # the run config carries the acceptance keys too: the node's own settings ignore them
    run_config = {**DEFAULT_RUN_CONFIG, **HEART, "acceptance-max-site-drop": 0.05}
    context = node_context(data_dir / "processed.hungarian.data", "hungarian", run_config)
    reply = accept(bad, context)
    assert reply.has_error()
    assert reply.error.reason.startswith(
        "AcceptanceOnNodeError: site hungarian: fp32.onnx: bytes differ from the sha256 the server sent"
    )
    good = Message(_content(files), dst_node_id=7, message_type=f"query.{ACCEPT_ACTION}")
    answered = accept(good, context)
    assert not answered.has_error()
    assert answered.content["client"]["site"] == "hungarian"
    assert answered.content["metrics"]["num-examples"] == MAX_SAMPLES


@pytest.mark.usefixtures("task_identity")
def test_a_node_whose_table_does_not_fit_the_model_replies_with_its_schema_reason(tmp_path, data_dir, files):
    narrow = narrow_table(data_dir / "processed.hungarian.data", tmp_path / "narrow.data")
    reply = accept(
        Message(_content(files), dst_node_id=7, message_type=f"query.{ACCEPT_ACTION}"), node_context(narrow, "small")
    )
    assert reply.has_error() and reply.error.reason.startswith("AcceptanceOnNodeError: site small: SchemaMismatchError")
