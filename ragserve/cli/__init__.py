"""The ``ragserve`` command line. Each command lives in its own module with a
``register(subparsers)`` function; heavy imports happen only when a command runs."""

from __future__ import annotations

import argparse
import importlib
import sys

# command modules, in the order `ragserve --help` lists them
COMMAND_MODULES = ["serve", "up", "ingest", "validate", "canary", "eval"]


def build_parser() -> argparse.ArgumentParser:
    from ragserve import __version__

    parser = argparse.ArgumentParser(
        prog="ragserve",
        description="KServe-based serving bundle for retrieval-augmented generation.",
    )
    parser.add_argument("--version", action="version", version=f"ragserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"ragserve.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ragserve.procs import grpc_fork_safe

    grpc_fork_safe()  # before any command module loads gRPC
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
