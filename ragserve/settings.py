"""Settings shared by every served component, and the settings -> CLI mapping.

Each component has exactly one settings class (``EmbeddingSettings``,
``GenerationSettings``, ...). Fields carry a docstring, a default that works on
a laptop and an env var ``RAGSERVE_<COMPONENT>_<FIELD>``. The command line is
generated from the same class (:func:`add_settings_arguments`), so a flag, an
env var and a field are always the same thing.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """Fields every KServe server process of ragserve has."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_",
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        protected_namespaces=(),
    )

    model_name: str = "model"
    """Name the model is served under (the ``{model}`` of ``/v2/models/{model}``)."""

    host: str = "127.0.0.1"
    """Address the HTTP and gRPC servers bind. Loopback by default; container images set 0.0.0.0."""

    http_port: int = Field(8080, ge=0, le=65535)
    """HTTP port (V1, V2, OpenAI routes, /metrics)."""

    grpc_port: int = Field(8081, ge=0, le=65535)
    """gRPC port (V2 / Open Inference Protocol)."""

    enable_grpc: bool = True
    """Serve the V2 gRPC protocol next to REST."""

    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    """Largest accepted HTTP request body; larger bodies get 413."""

    grpc_max_message_bytes: int = Field(16 * 1024 * 1024, gt=0)
    """Largest gRPC message in either direction."""

    max_concurrent_requests: int = Field(0, ge=0)
    """Requests served at once before new ones get 429 (0 = unlimited)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level for ragserve, KServe and uvicorn."""

    dead_engine_exit_s: float = Field(5.0, ge=0)
    """Seconds a server whose engine died keeps answering 503 (naming why) before it exits with
    status 1, so Kubernetes or ``ragserve up`` restarts it: an engine does not come back in-process."""


def _strtobool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", "y", "t"):
        return True
    if v in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def env_name(cls: type[BaseSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings]) -> None:
    """Add one flag per settings field: ``--field-name`` and KServe's ``--field_name``.

    Defaults are suppressed so that only flags given on the command line
    override env vars; :func:`settings_from_args` builds the object.
    """
    for name, field in cls.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        flags = [f"--{name.replace('_', '-')}"]
        if "_" in name:
            flags.append(f"--{name}")
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("cli_short"):
            flags.insert(0, field.json_schema_extra["cli_short"])  # kubectl's -n, for one
        help_text = (field.description or "").strip()
        default = field.default
        help_text += f" [env {env_name(cls, name)}; default {default!r}]"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if annotation is bool:
            kwargs.update(type=_strtobool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(annotation) is Literal:
            kwargs.update(choices=list(typing.get_args(annotation)))
        elif annotation in (int, float, str):
            kwargs.update(type=annotation)
        elif typing.get_origin(annotation) in (list, dict) or annotation in (list, dict):
            kwargs.update(type=json.loads, metavar="JSON")
        else:
            kwargs.update(type=str)
        parser.add_argument(*flags, **kwargs)


def settings_from_args(cls: type[BaseSettings], args: argparse.Namespace) -> BaseSettings:
    overrides = {k: v for k, v in vars(args).items() if k in cls.model_fields}
    return cls(**overrides)
