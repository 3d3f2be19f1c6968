"""What TLS and SuperNode authentication need for a test federation: a CA, a server certificate, node key pairs.

``fedge certs`` writes a private certificate authority and a SuperLink certificate signed by it (SANs for the
names and addresses the nodes dial); every node and ``fedge run`` trust the CA file. ``fedge node-keys`` writes
one ECDSA P-384 key pair per node: the private key stays on the node (``--auth-key``), the public key goes on the
SuperLink's allow-list (``fedge server --allow``, which registers it with ``flwr supernode register``).

These are for a test federation or a pilot. In production, certificates come from your organisation's CA and each
node makes its own key pair, so that no private key ever leaves the machine it belongs to.

>>> import tempfile; from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> tls = make_test_certificates(d, hosts=["localhost", "127.0.0.1"])
>>> sorted(p.name for p in d.iterdir())
['ca.crt', 'ca.key', 'server.key', 'server.pem']
>>> make_node_keys(d / "keys", ["hospital-a"])[0].public.name
'hospital-a.pub'
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.errors import ServerError

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CredentialsError(ServerError):
    """Certificates or keys that cannot be made or read."""


@dataclass(frozen=True)
class TlsFiles:
    ca_certificate: Path
    """Give this to every node (``--root-certificates``) and to ``fedge run``."""
    server_certificate: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    name: str
    private: Path
    """OpenSSH-format private key: stays on the node."""
    public: Path
    """OpenSSH-format public key: goes on the SuperLink's allow-list."""


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:  # created 0600: a private key is never readable by others, not even for a moment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
    else:
        path.write_bytes(data)


def _refuse_overwrite(paths: Sequence[Path], overwrite: bool, consequence: str) -> None:
    """Keys and certificates are never replaced silently: an existing one is refused unless ``overwrite``."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise CredentialsError(f"{', '.join(existing)} already exist(s): {consequence} (pass --force to replace)")


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_test_certificates(
    directory: str | Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
    overwrite: bool = False,
) -> TlsFiles:
    """A CA (``ca.crt``/``ca.key``) and a SuperLink certificate (``server.pem``/``server.key``) for ``hosts``;
    files already in ``directory`` are refused unless ``overwrite``."""
    if not hosts:
        raise CredentialsError("the server certificate needs at least one host name or IP address the nodes dial")
    directory = Path(directory)
    names = ("ca.crt", "ca.key", "server.pem", "server.key")
    _refuse_overwrite(
        [directory / n for n in names], overwrite, "a new CA would make every node's copy of ca.crt stop working"
    )
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedge test federation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        # localhost and 127.0.0.1 always: `fedge server` registers the allow-list with its own SuperLink over loopback
        .add_extension(
            x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys([*hosts, "localhost", "127.0.0.1"])]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    _write(files.ca_certificate, ca.public_bytes(serialization.Encoding.PEM))
    _write(directory / "ca.key", ca_key.private_bytes(serialization.Encoding.PEM, pkcs8, none), private=True)
    _write(files.server_certificate, server.public_bytes(serialization.Encoding.PEM))
    _write(files.server_key, server_key.private_bytes(serialization.Encoding.PEM, pkcs8, none), private=True)
    return files


def make_node_keys(directory: str | Path, names: Sequence[str], *, overwrite: bool = False) -> list[NodeKey]:
    """One ECDSA P-384 key pair per node name, in the OpenSSH format Flower's SuperNode authentication reads;
    a pair already in ``directory`` is refused unless ``overwrite`` (nothing is written then)."""
    for name in names:
        if not NODE_NAME.match(name):
            raise CredentialsError(
                f"node name {name!r} is not usable as a file name; use letters, digits, '.', '_' and '-' only"
            )
    directory = Path(directory)
    _refuse_overwrite(
        [directory / f"{n}.{ext}" for n in names for ext in ("key", "pub")],
        overwrite,
        "a new key would not match the public key on the server's allow-list",
    )
    keys = []
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        node = NodeKey(name, directory / f"{name}.key", directory / f"{name}.pub")
        _write(
            node.private,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            private=True,
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(node.public, public + f" {name}\n".encode())
        keys.append(node)
    return keys


def check_public_key(path: str | Path) -> Path:
    """``path`` if it holds an OpenSSH elliptic-curve public key (what ``flwr supernode register`` accepts)."""
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"public key {path} does not exist; make one with `fedge node-keys`")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CredentialsError(
            f"{path} is not an OpenSSH public key ({e}); give the node's .pub file from `fedge node-keys`"
        ) from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CredentialsError(f"{path} is not an elliptic-curve key; SuperNode authentication needs ECDSA (P-384)")
    return path


def check_private_key(path: str | Path) -> Path:
    """``path`` if it holds an OpenSSH elliptic-curve private key (what ``flower-supernode`` reads)."""
    path = Path(path)
    if not path.is_file():
        raise CredentialsError(f"private key {path} does not exist; make one with `fedge node-keys`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CredentialsError(
            f"{path} is not an unencrypted OpenSSH private key ({e}); `fedge node-keys` writes the right format"
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"{path} is not an elliptic-curve key; SuperNode authentication needs ECDSA (P-384)")
    return path
