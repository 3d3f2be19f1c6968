"""The server's Ed25519 signing key: make it, read it, sign with it.

``fedge keygen`` writes ``NAME.key`` (PKCS#8 PEM, mode 0600, optionally encrypted with a passphrase from the
``FEDGE_KEY_PASSPHRASE`` environment variable) and ``NAME.pub`` (the public key a device trusts).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent.protocol import canonical_json, keyid_of
from edge.delivery.errors import KeyFileError

PASSPHRASE_ENV = "FEDGE_KEY_PASSPHRASE"


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def keyid(self) -> str:
        return keyid_of(self.public_raw)

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, signed: dict[str, Any]) -> dict[str, Any]:
        """A TUF-style envelope: ``{"signed": signed, "signatures": [{"keyid", "sig"}]}``."""
        sig = base64.b64encode(self.private.sign(canonical_json(signed))).decode("ascii")
        return {"signed": signed, "signatures": [{"keyid": self.keyid, "sig": sig}]}

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())


def write_keypair(key: SigningKey, path: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``PATH.key`` (0600) and ``PATH.pub``; refuse to overwrite an existing key unless told to."""
    path = Path(path)
    private_path, public_path = path.with_suffix(".key"), path.with_suffix(".pub")
    if private_path.exists() and not overwrite:
        raise KeyFileError(
            f"{private_path} exists: a new key would lock out every device that trusts the old one "
            "(pass --force to replace it)"
        )
    passphrase = os.environ.get(PASSPHRASE_ENV)
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_pem())
    return private_path, public_path


def load_signing_key(path: Path) -> SigningKey:
    """Read a private key written by :func:`write_keypair`."""
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read the signing key {path}: {e} (make one with `fedge keygen`)") from e
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase.encode() if passphrase else None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not a readable private key ({e}); is {PASSPHRASE_ENV} set right?") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key (make one with `fedge keygen`)")
    return SigningKey(key)
