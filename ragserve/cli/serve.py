"""``ragserve serve COMPONENT [--setting value ...]``: run one KServe server.

Flags are generated from the component's settings class, so every flag is
also an env var (``RAGSERVE_<COMPONENT>_<FIELD>``) and KServe's own
``--model_name`` / ``--http_port`` / ``--predictor_host`` spellings work.
"""

from __future__ import annotations

import argparse
import importlib
import signal

# component -> (module, settings class, server factory)
COMPONENTS: dict[str, tuple[str, str, str]] = {
    "embedding": ("ragserve.predictors.embedding", "EmbeddingSettings", "create_server"),
    "generation": ("ragserve.predictors.generation", "GenerationSettings", "create_server"),
    "rag-transformer": ("ragserve.transformers.rag", "RagTransformerSettings", "create_server"),
}


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run a predictor or transformer server",
        description="Run one ragserve component as a KServe server (V1/V2 REST, V2 gRPC, OpenAI routes).",
    )
    p.add_argument("component", choices=sorted(COMPONENTS), help="which component to serve")
    p.add_argument("options", nargs=argparse.REMAINDER, help="component settings; see `ragserve serve COMPONENT --help`")
    p.set_defaults(func=run)


def component_parser(component: str):
    from ragserve.settings import add_settings_arguments

    module_name, settings_name, _ = COMPONENTS[component]
    settings_cls = getattr(importlib.import_module(module_name), settings_name)
    parser = argparse.ArgumentParser(
        prog=f"ragserve serve {component}",
        description=(settings_cls.__doc__ or "").strip(),
    )
    add_settings_arguments(parser, settings_cls)
    return parser, settings_cls


def run(args) -> int:
    from pydantic import ValidationError

    from ragserve.errors import describe_validation_errors
    from ragserve.server import configure_logging
    from ragserve.settings import settings_from_args

    parser, settings_cls = component_parser(args.component)
    try:
        settings = settings_from_args(settings_cls, parser.parse_args(args.options))
    except ValidationError as exc:
        parser.error(describe_validation_errors(exc.errors(), root="settings"))  # one line naming the setting, exit 2
    configure_logging(settings.log_level)
    # Until the server takes over the signals: SIGTERM during a slow load (a vLLM
    # engine starting) unwinds like Ctrl-C, so what was started is stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    module_name, _, factory = COMPONENTS[args.component]
    try:
        server = getattr(importlib.import_module(module_name), factory)(settings)
        return server.run()  # stops its models, then re-raises the signal that ended it
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: everything is stopped, no traceback
        return 128 + signal.SIGINT


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)
