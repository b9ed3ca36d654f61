"""The state file a running ``ragserve up`` keeps in its state dir (``up.json``):
its pid, endpoints, children, and the settings an ingestion into its graph uses.

Read by ``ragserve status``/``down`` and by ``ragserve ingest``, which sends new
documents to the running graph's Milvus and embedder without flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_FILE = "up.json"
DEFAULT_STATE_DIR = ".ragserve"


def state_dir_default() -> str:
    return os.environ.get("RAGSERVE_UP_STATE_DIR", DEFAULT_STATE_DIR)


def read_state(state_dir: str) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process its parent has not reaped yet (a zombie) is gone too
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def running_state(state_dir: str) -> dict | None:
    """The state of a ``ragserve up`` that is still running, else None (a stale file is ignored)."""
    state = read_state(state_dir)
    return state if state and pid_alive(state["pid"]) else None
