"""The server's Ed25519 signing key: make it, read it, sign with it.

``fedge keygen`` writes ``NAME.key`` (PKCS#8 PEM, mode 0600, optionally encrypted with a passphrase from the
``FEDGE_KEY_PASSPHRASE`` environment variable) and ``NAME.pub`` (the public key a device trusts).

Key rotation (TUF's root idea, kept small): ``fedge keygen --root`` makes a root key, kept offline; devices trust its
public half (``--trust-root``). The root signs a key set (:func:`build_keyset`: a version, an expiry, the signing
keys' public halves and the revoked key ids); ``fedge keys rotate`` publishes it, retained, on
:data:`~edge.agent.protocol.KEYS_TOPIC`. A device takes a key set only if the root signed it and its version is
higher than the one it has; manifests signed by a revoked key are refused from then on.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent.errors import AgentError
from edge.agent.protocol import KeySet, canonical_json, keyid_of
from edge.agent.verify import load_public_key
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


def read_public_key(path: Path) -> tuple[str, bytes]:
    """A public key file (``NAME.pub`` from ``fedge keygen``): ``(key id, raw 32 bytes)``."""
    try:
        keyid, key = load_public_key(Path(path).read_bytes())
    except OSError as e:
        raise KeyFileError(f"cannot read the public key {path}: {e}") from e
    except AgentError as e:
        raise KeyFileError(f"{path}: {e}") from e
    return keyid, key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


DEFAULT_KEYSET_EXPIRES_S = 365 * 24 * 3600


def build_keyset(
    root: SigningKey,
    keys: Sequence[Path],
    *,
    revoked: Sequence[Path | str] = (),
    version: int | None = None,
    expires_in_s: float = DEFAULT_KEYSET_EXPIRES_S,
    now: float | None = None,
) -> bytes:
    """The root-signed key set naming the signing keys devices trust (``keys``: public key files) and the key ids
    (or public key files) they must never trust again. Without a version, the current Unix time (always higher)."""
    now = time.time() if now is None else now
    listed = dict(read_public_key(p) for p in keys)
    if not listed:
        raise KeyFileError("a key set needs at least one signing key (--key PATH.pub)")
    revoked_ids = [r if isinstance(r, str) and len(r) == 64 else read_public_key(Path(r))[0] for r in revoked]
    if set(listed) & set(revoked_ids):
        raise KeyFileError("a key cannot be both trusted and revoked: drop it from --key or from --revoke")
    if root.keyid in listed:
        raise KeyFileError("the root key signs key sets only: list the signing keys (`fedge keygen`), not the root")
    keyset = KeySet(
        version=int(now) if version is None else int(version),
        issued=int(now),
        expires=int(now + expires_in_s),
        keys=listed,
        revoked=tuple(revoked_ids),
    )
    try:
        KeySet.from_signed(keyset.to_signed())  # the checks a device runs
    except AgentError as e:
        raise KeyFileError(f"the key set is not valid: {e}") from e
    return json.dumps(root.sign(keyset.to_signed()), separators=(",", ":")).encode("utf-8")
