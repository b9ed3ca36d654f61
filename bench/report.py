"""Save a benchmark's result: stamped with the machine and time, written as JSON, echoed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from machine import describe


def save(result: dict, output: str | Path) -> dict:
    result = {**result, "machine": describe(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result
