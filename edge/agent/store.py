"""The model store on the device: the running model, the one before it, and the highest version ever accepted.

Layout of ``STORE/``::

    state.json                 {"current": {...}, "previous": {...} | null, "floor_version": N}
    models/{model}-v{N}.{ext}  the model files (at most the current and the previous one are kept)

Every change is written to a temporary file, flushed to disk and renamed over the old one, so a crash or a power
cut leaves either the old state or the new one, never half of each. A restarted agent resumes with the model
``state.json`` names, after checking its sha256 (a damaged file falls back to the previous model).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.agent.errors import ModelStoreError
from edge.agent.protocol import FORMATS, Manifest


@dataclass(frozen=True)
class StoredModel:
    model_id: str
    version: int
    format: str
    sha256: str
    length: int
    file: str  # relative to the store

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoredModel:
        return cls(
            model_id=str(d["model_id"]),
            version=int(d["version"]),
            format=str(d["format"]),
            sha256=str(d["sha256"]),
            length=int(d["length"]),
            file=str(d["file"]),
        )


@dataclass(frozen=True)
class StoreState:
    current: StoredModel | None = None
    previous: StoredModel | None = None
    floor_version: int = 0


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class ModelStore:
    """Reads and atomically changes the model store of one agent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        try:
            self.models.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ModelStoreError(f"cannot create the model store {self.root}: {e}") from e
        self.state = self._load()

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def _load(self) -> StoreState:
        if not self.state_file.exists():
            return StoreState()
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
            current = StoredModel.from_dict(raw["current"]) if raw.get("current") else None
            previous = StoredModel.from_dict(raw["previous"]) if raw.get("previous") else None
            state = StoreState(current, previous, int(raw.get("floor_version", 0)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelStoreError(f"{self.state_file} is unreadable ({e}); move it away to start empty") from e
        if state.current and not self.intact(state.current):
            # the running model is damaged: fall back to the previous one, keep the floor
            state = StoreState(
                state.previous if state.previous and self.intact(state.previous) else None, None, state.floor_version
            )
            self._save(state)
        return state

    def _save(self, state: StoreState) -> None:
        payload = {
            "current": asdict(state.current) if state.current else None,
            "previous": asdict(state.previous) if state.previous else None,
            "floor_version": state.floor_version,
        }
        _write_atomic(self.state_file, json.dumps(payload, indent=2).encode("utf-8"))
        self.state = state

    def path(self, model: StoredModel) -> Path:
        return self.root / model.file

    def intact(self, model: StoredModel) -> bool:
        try:
            data = self.path(model).read_bytes()
        except OSError:
            return False
        return len(data) == model.length and hashlib.sha256(data).hexdigest() == model.sha256

    def read(self, model: StoredModel) -> bytes:
        try:
            return self.path(model).read_bytes()
        except OSError as e:
            raise ModelStoreError(f"cannot read {self.path(model)}: {e}") from e

    def install(self, manifest: Manifest, data: bytes) -> StoreState:
        """Write a verified model and make it current; the current one becomes the previous one."""
        name = f"models/{manifest.model_id}-v{manifest.version}{FORMATS[manifest.format]}"
        model = StoredModel(manifest.model_id, manifest.version, manifest.format, manifest.sha256, len(data), name)
        try:
            _write_atomic(self.root / name, data)
            old = self.state
            new = StoreState(model, old.current, max(old.floor_version, manifest.version))
            self._save(new)
        except OSError as e:
            raise ModelStoreError(f"cannot write the model to {self.root}: {e}") from e
        self._prune()
        return new

    def rollback(self) -> StoreState:
        """Make the previous model current again; the floor stays, so the rolled-back version is never re-accepted."""
        old = self.state
        if old.previous is None:
            raise ModelStoreError("there is no previous model to roll back to")
        new = StoreState(old.previous, None, old.floor_version)
        self._save(new)
        self._prune()
        return new

    def _prune(self) -> None:
        keep = {m.file for m in (self.state.current, self.state.previous) if m}
        for f in self.models.iterdir():
            if f"models/{f.name}" not in keep and not f.name.startswith("."):
                f.unlink(missing_ok=True)
