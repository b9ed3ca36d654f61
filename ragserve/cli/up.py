"""``ragserve up`` / ``status`` / ``down``: the InferenceGraph of an overlay, running locally."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def register(sub) -> None:
    from ragserve.local.runner import UpSettings
    from ragserve.local.state import state_dir_default
    from ragserve.settings import add_settings_arguments

    up = sub.add_parser(
        "up",
        help="run an overlay's InferenceServices and graph as local processes",
        description="Render an overlay (default: local) and run its InferenceServices, InferenceGraph and "
        "canary revisions as processes on 127.0.0.1, with a local Milvus and the sample corpus.",
    )
    add_settings_arguments(up, UpSettings)
    up.set_defaults(func=run_up)

    for name, helptext, func in (
        ("status", "show what `ragserve up` is running and whether each endpoint is ready", run_status),
        ("down", "stop a running `ragserve up`", run_down),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--state-dir", "--state_dir", default=state_dir_default(),
                       help="state folder of the `ragserve up` to address [env RAGSERVE_UP_STATE_DIR]")
        p.set_defaults(func=func)


def run_up(args: argparse.Namespace) -> int:
    import asyncio

    from ragserve.errors import RagserveError
    from ragserve.local.runner import LocalRunner, UpSettings
    from ragserve.local.state import running_state
    from ragserve.server import configure_logging
    from ragserve.settings import settings_from_args

    settings = settings_from_args(UpSettings, args)
    configure_logging(settings.log_level)
    state = running_state(settings.state_dir)
    if state:
        print(f"ragserve up is already running (pid {state['pid']}); `ragserve down` stops it", file=sys.stderr)
        return 1
    try:
        asyncio.run(LocalRunner(settings).run())
    except (RagserveError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"ragserve up: {exc}", file=sys.stderr)
        return 1
    return 0


def run_status(args: argparse.Namespace) -> int:
    import httpx

    from ragserve.local.state import pid_alive, running_state

    state = running_state(args.state_dir)
    if not state:
        print("ragserve up is not running", file=sys.stderr)
        return 1
    print(f"ragserve up (pid {state['pid']}) running {state['source']}")
    for ep in state["endpoints"]:
        status = ""
        if ep["url"].startswith("http") and ep["kind"] != "milvus":
            try:
                r = httpx.get(ep["url"] + "/v2/health/ready", timeout=2)
                status = "ready" if r.status_code == 200 else f"not ready ({r.status_code})"
            except httpx.HTTPError as exc:
                status = f"unreachable ({type(exc).__name__})"
        print(f"  {ep['kind']:8} {ep['name']:22} {ep['url']:40} {status}")
    for child in state["children"]:
        print(f"  process  {child['name']:22} pid {child['pid']}  {'alive' if child['pid'] and pid_alive(child['pid']) else 'gone'}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from ragserve.local.state import pid_alive, running_state

    state = running_state(args.state_dir)
    if not state:
        print("ragserve up is not running", file=sys.stderr)
        return 1
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and pid_alive(state["pid"]):
        time.sleep(0.2)
    if pid_alive(state["pid"]):
        print(f"ragserve up (pid {state['pid']}) did not stop within 60 s", file=sys.stderr)
        return 1
    print("ragserve up stopped")
    return 0
