"""Small real models and data for the edge tests: a logistic regression on scikit-learn's digits, built as an ONNX
graph with onnx.helper (instant) and converted to TFLite with litert-torch (a couple of seconds), plus a "bad"
twin (shuffled classes) for the rollback tests, a signing key, and an in-memory transport and clock for driving an
agent without a broker (the fixtures that use them are in conftest.py)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np

from edge.agent.agent import DeviceAgent
from edge.agent.protocol import Command, parse_topic
from edge.delivery.keys import SigningKey
from edge.delivery.publisher import Artifact, SignedModel, sign_artifact


@functools.cache
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


@functools.cache
def logistic_weights(bad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = digits_split()
    w, b = np.zeros((64, 10), np.float32), np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(300):  # softmax regression, plain gradient descent: milliseconds
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= 0.5 * x.T @ (p - onehot) / len(x)
        b -= 0.5 * (p - onehot).mean(axis=0)
    if bad:  # every class scored as the next one: accuracy near 0
        w, b = np.roll(w, 1, axis=1), np.roll(b, 1)
    return w, b


def onnx_model(bad: bool = False) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = logistic_weights(bad)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "digits-logreg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "shape"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@functools.cache
def tflite_model(bad: bool = False) -> bytes:
    import tempfile

    import litert_torch
    import torch

    w, b = logistic_weights(bad)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(w.T))
        net[1].bias.copy_(torch.from_numpy(b))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        litert_torch.convert(net, (torch.zeros(1, 1, 8, 8),)).export(str(path))
        return path.read_bytes()


def write_samples(path: Path, *, labels: bool = True) -> Path:
    _, _, x, y = digits_split()
    if labels:
        np.savez(path, x=x.reshape(-1, 1, 8, 8), y=y)
    else:
        np.savez(path, x=x.reshape(-1, 1, 8, 8))
    return path


@functools.cache
def signing_key() -> SigningKey:
    return SigningKey.generate()


def write_public_key(key: SigningKey, path: Path) -> Path:
    path.write_bytes(key.public_pem())
    return path


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost, signed by it: (ca, cert, key) PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedge test CA"))
        .issuer_name(name("fedge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.crt", directory / "server.crt", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


class FakeTransport:
    """An in-memory broker connection: records what the agent publishes and subscribes to."""

    def __init__(self) -> None:
        self.connected = True
        self.published: list[tuple[str, bytes, bool]] = []
        self.subscribed: set[str] = set()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        self.subscribed.add(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self.subscribed.discard(topic_filter)

    def messages(self, kind: str) -> list[dict]:
        out = []
        for topic, payload, _ in self.published:
            parsed = parse_topic(topic)
            if parsed is not None and parsed.kind == kind and payload:
                out.append(json.loads(payload))
        return out

    def outcomes(self) -> list[dict]:
        return self.messages("events")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def signed(
    data: bytes,
    version: int,
    *,
    fmt: str = "onnx",
    key=None,
    chunk_size: int = 1024,
    expires_in_s: float = 3600,
    now: float | None = None,
    model_id: str = "digits",
    targets: tuple[str, ...] = ("dev-1",),
    group: str = "",
) -> SignedModel:
    """A model signed for ``targets`` (the test agent, dev-1, by default) and/or ``group``."""
    art = Artifact(Path(f"m.{fmt}"), data, model_id, version, fmt, {})
    return sign_artifact(
        art,
        key or signing_key(),
        chunk_size=chunk_size,
        expires_in_s=expires_in_s,
        now=now,
        targets=targets,
        group=group,
    )


def deliver(agent: DeviceAgent, model: SignedModel, *, chunks: list[tuple[str, bytes, bool]] | None = None) -> None:
    agent.handle(f"fedge/v1/devices/{agent.device_id}/manifest", model.envelope)
    for topic, payload, _ in chunks if chunks is not None else model.chunk_messages():
        agent.handle(topic, payload)


def rollback_command(device_id: str, from_version: int, *, now: float | None = None, model_id: str = "digits") -> bytes:
    now = int(now or time.time())
    command = Command("rollback", device_id, model_id, from_version, now, now + 600, "canary unhealthy")
    return json.dumps(signing_key().sign(command.to_signed())).encode()
