"""The node's privacy state on disk, so that it survives a restart of the node.

Flower keeps a ClientApp's ``Context.state`` in the SuperNode's memory: it lasts as long as the SuperNode process
and the Flower run. The accountant's history must outlive both: a hospital's node that restarts mid-run, or a run
that the server resumes (a new Flower run), must go on spending from the ε already spent, never from zero.

With a state directory in the node config (``state-dir``), the records below are mirrored to
``<state-dir>/runs/<run key>/node-state.json`` after every round (written atomically) and read back before the next.
The run key is fedge's run id (``run-id`` in the run config, kept by ``fedge run --resume``), so a new run starts
fresh and a resumed one continues.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from client.errors import ClientError
from shared_models.run_dir import write_json

# client.privacy's STATE_KEY and CALIBRATION_KEY, spelled out so that reading the state does not import Opacus
# (a second of a fresh ClientApp process's start-up; tests/client checks they stay equal).
PERSISTED_KEYS = ("dp-accountant", "dp-calibration")
FILE_NAME = "node-state.json"


def state_file(state_dir: str | Path, run_key: str) -> Path:
    """Where one run's state of this node lives."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_key) or "default"
    return Path(state_dir).expanduser() / "runs" / safe / FILE_NAME


def restore_state(state: RecordDict, path: Path) -> None:
    """Put the records saved in ``path`` (if any) into ``state``; the file wins over memory, being never older."""
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClientError(
            f"cannot read this node's saved privacy state {path}: {e}. Refusing to train rather than restart the "
            "privacy accounting from zero; restore the file from a backup, or delete it only if this run's data "
            "was never used"
        ) from e
    for key in PERSISTED_KEYS:
        if key in saved:
            state[key] = ConfigRecord(dict(saved[key]))


def save_state(state: RecordDict, path: Path) -> None:
    """Write the persisted records of ``state`` to ``path``, whole or not at all (the run directory's one atomic
    write: temporary file, fsync, rename)."""
    write_json(path, {key: dict(state[key]) for key in PERSISTED_KEYS if key in state})
