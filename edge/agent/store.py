"""The model store on the device: the running model, the one before it, and the highest version ever accepted per
model id.

Layout of ``STORE/``::

    state.json                 {"current": {...}, "previous": {...} | null, "floors": {model id: N}, "lost": ...}
                               (each model with its signed manifest's preprocessing and lineage)
    keyset.json                the newest root-signed key set accepted (the envelope, as it arrived)
    models/{model}-v{N}.{ext}  the model files (at most the current and the previous one are kept)

Every change is written to a temporary file (created exclusively, never through a symlink), flushed to disk and
renamed over the old one, so a crash or a power cut leaves either the old state or the new one, never half of each;
a temporary file left by a failed write (a full disk) is removed at once, and any left by a crash on the next start.

The store never destroys its last good model: a model becomes current only after it was checked (length, sha256)
and loaded by the caller, and files are deleted (:meth:`ModelStore.prune`) only once the replacement is serving.
A restarted agent resumes with the model ``state.json`` names after checking it; a damaged one falls back to an
intact previous one, and with neither the store says it has no model (and remembers the lost one in ``lost``, so
the very same signed version may be delivered again to repair it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge.agent.errors import AgentError, ModelStoreError, PreviousModelError
from edge.agent.protocol import FORMATS, Manifest

log = logging.getLogger("fedge.agent")
T = TypeVar("T")


@dataclass(frozen=True)
class StoredModel:
    model_id: str
    version: int
    format: str
    sha256: str
    length: int
    file: str  # relative to the store
    #: the signed manifest's device preprocessing: applied again after a restart or a rollback to this model
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: the signed manifest's lineage and privacy statement, published in the device's retained state
    lineage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoredModel:
        return cls(
            model_id=str(d["model_id"]),
            version=int(d["version"]),
            format=str(d["format"]),
            sha256=str(d["sha256"]),
            length=int(d["length"]),
            file=str(d["file"]),
            preprocessing=dict(d.get("preprocessing") or {}),  # absent in a store written before it was kept
            lineage=dict(d.get("lineage") or {}),
        )


@dataclass(frozen=True)
class StoreState:
    current: StoredModel | None = None
    previous: StoredModel | None = None
    #: per model id, the highest version ever accepted: nothing at or below it is accepted again (rollback)
    floors: dict[str, int] = field(default_factory=dict)
    #: a model that was current but is damaged or does not load: the same signed version may repair it
    lost: StoredModel | None = None

    def floor(self, model_id: str) -> int:
        return self.floors.get(model_id, 0)

    @property
    def floor_version(self) -> int:
        """The floor of the model id the device runs now (0 without a model)."""
        return self.floor(self.current.model_id) if self.current else max(self.floors.values(), default=0)


def _fsync_dir(directory: Path) -> None:
    try:  # make a rename durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a fresh temporary file: created with O_EXCL and O_NOFOLLOW (a planted
    symlink or file at the temporary name is removed, never written through), removed again when the write fails."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # unlink removes a symlink itself, not its target
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # rename replaces a symlink at ``path``, never writes through it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class ModelStore:
    """Reads and atomically changes the model store of one agent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        try:
            self.models.mkdir(parents=True, exist_ok=True)
            self._remove_temporary_files()
        except OSError as e:
            raise ModelStoreError(f"cannot create the model store {self.root}: {e}") from e
        self.state = self._load()

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def keyset_file(self) -> Path:
        return self.root / "keyset.json"

    def _remove_temporary_files(self) -> None:
        for directory in (self.root, self.models):
            for f in directory.glob(".*.tmp"):
                f.unlink(missing_ok=True)

    def _load(self) -> StoreState:
        if not self.state_file.exists():
            return StoreState()
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
            current = StoredModel.from_dict(raw["current"]) if raw.get("current") else None
            previous = StoredModel.from_dict(raw["previous"]) if raw.get("previous") else None
            lost = StoredModel.from_dict(raw["lost"]) if raw.get("lost") else None
            floors = {str(k): int(v) for k, v in dict(raw.get("floors") or {}).items()}
            if "floor_version" in raw and current is not None:  # a store written before floors per model id
                floors[current.model_id] = max(floors.get(current.model_id, 0), int(raw["floor_version"]))
            state = StoreState(current, previous, floors, lost)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelStoreError(f"{self.state_file} is unreadable ({e}); move it away to start empty") from e
        if state.current and not self.intact(state.current):
            if state.previous and self.intact(state.previous):
                log.warning(
                    "model store: v%s is damaged; resuming with v%s", state.current.version, state.previous.version
                )
                state = StoreState(state.previous, None, state.floors, state.current)
            else:
                log.error(
                    "model store: v%s is damaged and there is no intact previous model: no model to run, "
                    "waiting for a new one",
                    state.current.version,
                )
                state = StoreState(None, None, state.floors, state.current)
            self._save(state)
        return state

    def _save(self, state: StoreState) -> None:
        payload = {
            "current": asdict(state.current) if state.current else None,
            "previous": asdict(state.previous) if state.previous else None,
            "floors": state.floors,
            "lost": asdict(state.lost) if state.lost else None,
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

    def read_intact(self, model: StoredModel) -> bytes:
        """The model's bytes, after checking their length and sha256 against what was installed."""
        data = self.read(model)
        if len(data) != model.length or hashlib.sha256(data).hexdigest() != model.sha256:
            raise ModelStoreError(f"{self.path(model)} is damaged (length or sha256 differs from what was installed)")
        return data

    def repairs(self, manifest: Manifest) -> bool:
        """Whether ``manifest`` is exactly the lost model (same id, version and sha256): allowed at the floor."""
        lost = self.state.lost
        return (
            lost is not None
            and self.state.current is None
            and (lost.model_id, lost.version, lost.sha256) == (manifest.model_id, manifest.version, manifest.sha256)
        )

    def install(self, manifest: Manifest, data: bytes) -> StoreState:
        """Write a verified (and already loaded) model and make it current; the current one becomes the previous one.
        Nothing is deleted here: call :meth:`prune` once the new model is serving."""
        name = f"models/{manifest.model_id}-v{manifest.version}{FORMATS[manifest.format]}"
        model = StoredModel(
            manifest.model_id,
            manifest.version,
            manifest.format,
            manifest.sha256,
            len(data),
            name,
            preprocessing=dict(manifest.preprocessing),
            lineage=dict(manifest.lineage),
        )
        old = self.state
        floors = {**old.floors, manifest.model_id: max(old.floor(manifest.model_id), manifest.version)}
        previous = old.current if old.current and old.current.file != name else old.previous
        try:
            _write_atomic(self.root / name, data)
            self._save(StoreState(model, previous, floors, None))
        except OSError as e:
            raise ModelStoreError(f"cannot write the model to {self.root}: {e}") from e
        return self.state

    def rollback(self, load: Callable[[StoredModel, bytes], T]) -> tuple[StoreState, T]:
        """Make the previous model current again, only after it was checked (length, sha256) and ``load`` (the
        runtime) took it; the floor stays, so the rolled-back version is never re-accepted. On any failure nothing
        changes and :class:`PreviousModelError` says why. Returns the new state and what ``load`` returned."""
        old = self.state
        if old.previous is None:
            raise PreviousModelError("there is no previous model to roll back to")
        try:
            loaded = load(old.previous, self.read_intact(old.previous))
        except AgentError as e:
            raise PreviousModelError(f"the previous model v{old.previous.version} cannot serve: {e}") from e
        try:
            self._save(StoreState(old.previous, None, old.floors, None))
        except OSError as e:
            raise ModelStoreError(f"cannot write {self.state_file}: {e}") from e
        return self.state, loaded

    def forget_current(self) -> StoreState:
        """The current model does not load and nothing else does: run no model, remember it as ``lost``."""
        old = self.state
        self._save(StoreState(None, None, old.floors, old.current or old.lost))
        return self.state

    def prune(self) -> None:
        """Delete model files that are neither current nor previous (call once the current one is serving)."""
        keep = {m.file for m in (self.state.current, self.state.previous) if m}
        for f in self.models.iterdir():
            if f"models/{f.name}" not in keep and not f.name.startswith("."):
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------- key set

    def save_keyset(self, envelope: bytes) -> None:
        try:
            _write_atomic(self.keyset_file, envelope)
        except OSError as e:
            raise ModelStoreError(f"cannot write {self.keyset_file}: {e}") from e

    def load_keyset(self) -> bytes | None:
        try:
            return self.keyset_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ModelStoreError(f"cannot read {self.keyset_file}: {e}") from e
