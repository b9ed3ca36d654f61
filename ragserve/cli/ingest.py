"""``ragserve ingest PATH... [--collection C] [--sync] [--local]``: fill Milvus with document chunks.

Flags are generated from :class:`~ragserve.pipelines.ingest.IngestSettings`,
so each is also an env var (``RAGSERVE_INGEST_<FIELD>``). While ``ragserve up``
runs, its graph's Milvus, embedder and collection are the defaults (flags and env
vars still win), so ``ragserve ingest ./docs`` needs no flags. Prints a JSON
report; exits 2 when a dependency or a document fails (the message names which).
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from ragserve.local.state import state_dir_default
    from ragserve.pipelines.ingest import IngestSettings
    from ragserve.settings import add_settings_arguments

    p = sub.add_parser(
        "ingest",
        help="load, chunk, embed and upsert documents into Milvus",
        description=(
            "Ingest .txt/.md/.html/.pdf/.jsonl files (folders are walked) into a Milvus collection. "
            "Re-running is safe: chunk ids are content hashes, so unchanged chunks are upserted in place, "
            "and a killed run is completed by running it again."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to ingest")
    p.add_argument("--state-dir", "--state_dir", default=state_dir_default(),
                   help="state folder of a running `ragserve up` whose graph to ingest into [env RAGSERVE_UP_STATE_DIR]")
    add_settings_arguments(p, IngestSettings)
    p.set_defaults(func=run)


def run(args) -> int:
    import asyncio
    import json
    import logging
    import os
    import sys

    from ragserve.errors import DependencyUnavailable, RagserveError
    from ragserve.local.state import running_state
    from ragserve.pipelines.ingest import Ingester, IngestSettings
    from ragserve.pipelines.loaders import DocumentError
    from ragserve.settings import settings_from_args

    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ragserve").setLevel("INFO")
    graph = running_state(args.state_dir)
    for key, value in (graph or {}).get("ingest", {}).items():
        os.environ.setdefault(key, value)  # below flags and the user's env, above the defaults
    settings = settings_from_args(IngestSettings, args)
    if graph and not settings.local:
        print(f"ragserve ingest: into the running graph's Milvus ({settings.milvus_uri}), "
              f"collection {settings.collection}", file=sys.stderr)
    ingester = Ingester(settings)

    async def main():
        try:
            await ingester.open()
            return await ingester.run(args.paths)
        finally:
            await ingester.close()

    try:
        report = asyncio.run(main())
    except (RagserveError, DocumentError) as exc:
        print(f"ragserve ingest: {getattr(exc, 'message', exc)}", file=sys.stderr)
        if isinstance(exc, DependencyUnavailable) and graph is None and not settings.local:
            print("  no `ragserve up` is running here: start the local graph with `make run` (or `ragserve up`) "
                  "and ingest again, point --embedding-url/--milvus-uri at yours, or embed in this process "
                  "with --local", file=sys.stderr)
        return 2
    print(json.dumps({"collection": settings.collection, **report.as_dict()}))
    return 0
