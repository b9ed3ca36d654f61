"""App factory and runner for ragserve's KServe servers.

KServe's ``ModelServer`` binds 0.0.0.0, builds a global app at import and reads
``sys.argv``. We keep KServe's data plane, V1/V2 routes and gRPC servicer, and
compose them ourselves: :func:`build_app` returns a FastAPI app tests can drive
in-process, :class:`ModelServer` runs it with uvicorn and gRPC on the host from
settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures

import grpc
import orjson
import uvicorn
from cloudevents.sdk.converters.util import has_binary_headers
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from prometheus_client import REGISTRY, exposition

from .errors import NotReady, PayloadTooLarge, RagserveError, classify, error_payload
from .kserve_compat import (
    DataPlane,
    InferenceError,
    InvalidInput,
    Model,
    ModelRepository,
    ModelRepositoryExtension,
    kserve,
)
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER  # noqa: E402 (after kserve_compat)
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor  # noqa: E402
from kserve.protocol.rest.v2_datamodels import InferenceRequest  # noqa: E402
from .generate_routes import build_generate_router
from .openai.router import build_openai_router
from .limits import BodySizeLimitMiddleware, ConcurrencyLimitMiddleware
from .settings import ServingSettings

logger = logging.getLogger("ragserve")


class RagserveDataPlane(DataPlane):
    """KServe's data plane, except that an undecodable body is always the client's fault.

    KServe raises ``InferenceError`` (a 500) when, for example, binary BYTES
    input is not UTF-8, and rejects JSON sent without a JSON content type
    (``curl -d``). Decoding can only fail because of the request: 400.
    """

    async def ready(self) -> bool:
        """Server readiness: KServe's answer, and every model healthy (an engine that died is not ready)."""
        if not await super().ready():
            return False
        for model in self._model_registry.get_models().values():
            if not await model.healthy():
                return False
        return True

    def not_ready_error(self, model_name: str) -> Exception:
        """The 503 for a model that is not ready, with the model's own reason when it has one."""
        reason = getattr(self._model_registry.get_model(model_name), "not_ready_reason", None)
        if reason:
            return NotReady(f"model '{model_name}' is not ready: {reason}")
        return kserve.errors.ModelNotReady(model_name)

    def decode(self, body, headers, protocol_version="v1", model_name=None):
        if isinstance(body, (bytes, bytearray)) and not _is_binary_extension(headers) and not _is_cloudevent(headers):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body is not valid JSON: {exc}") from None
            if protocol_version == "v2":
                if not isinstance(parsed, dict):
                    raise InvalidInput("V2 request body must be a JSON object with 'inputs'")
                body = InferenceRequest.model_validate(parsed)
            else:
                body = parsed
        try:
            return super().decode(body, headers, protocol_version, model_name)
        except InvalidInput:
            raise
        except (InferenceError, KeyError, ValueError, TypeError) as exc:
            raise InvalidInput(f"could not decode request: {exc}") from exc


def _is_binary_extension(headers) -> bool:
    return bool(headers) and INFERENCE_CONTENT_LENGTH_HEADER in {k.lower() for k in headers}


def _is_cloudevent(headers) -> bool:
    # A binary CloudEvent carries its data raw; KServe decodes it itself.
    return bool(headers) and has_binary_headers(headers)


def error_response(request: Request, exc: BaseException) -> JSONResponse:
    info, body = error_payload(exc, request.url.path)
    if info.status_code >= 500 and not isinstance(exc, RagserveError):
        logger.exception("unhandled error on %s", request.url.path, exc_info=exc)
    else:
        logger.info("%s %s -> %d: %s", request.method, request.url.path, info.status_code, info.message)
    return JSONResponse(status_code=int(info.status_code), content=body)


def _install_error_handlers(app: FastAPI) -> None:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, exc)

    for exc_type in (
        RagserveError,
        RequestValidationError,
        ValidationError,
        InvalidInput,
        kserve.errors.ModelNotFound,
        kserve.errors.ModelNotReady,
        kserve.errors.ServerNotReady,
        kserve.errors.ServerNotLive,
        kserve.errors.UnsupportedProtocol,
        InferenceError,
        NotImplementedError,
        Exception,
    ):
        app.add_exception_handler(exc_type, handler)


def _v2_infer_route(dataplane: DataPlane):
    """``POST /v2/models/{model}/infer``, the same contract as KServe's route, serialized once.

    KServe's handler validates the response into a pydantic model that FastAPI
    then walks again with ``jsonable_encoder`` and dumps with the stdlib: for an
    embedding of 384 floats that was most of the event loop's time per request,
    taken from the GIL the forward pass needs. This one hands the dict to orjson.
    """

    async def infer(model_name: str, request: Request) -> Response:
        if not await dataplane.model_ready(model_name, True):
            raise dataplane.not_ready_error(model_name)
        headers = dict(request.headers)
        infer_request, _ = dataplane.decode(await request.body(), headers, "v2", model_name)
        result, response_headers = await dataplane.infer(model_name=model_name, request=infer_request, headers=headers)
        result, encode_headers = dataplane.encode(model_name=model_name, response=result, headers=headers, req_attributes={})
        response_headers = {k: v for k, v in {**response_headers, **encode_headers}.items()
                            if k.lower() not in ("content-length", "content-type")}
        if isinstance(result, (bytes, bytearray)):  # binary tensor extension: JSON header + raw outputs
            return Response(content=bytes(result), headers=response_headers)
        return Response(orjson.dumps(result), media_type="application/json", headers=response_headers)

    return infer


async def _metrics(request: Request) -> Response:
    encoder, content_type = exposition.choose_encoder(request.headers.get("accept"))
    return Response(content=encoder(REGISTRY), headers={"content-type": content_type})


def build_app(
    repository: ModelRepository,
    settings: ServingSettings,
    routers: Sequence = (),
) -> FastAPI:
    """Build the REST app: KServe V1/V2 routes, OpenAI routes, /metrics, extra routers, one error mapping."""
    from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    app = FastAPI(title="ragserve", version=kserve_version(), docs_url=None, redoc_url=None)
    dataplane = RagserveDataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    app.state.dataplane = dataplane
    app.state.repository = repository
    app.state.settings = settings
    app.add_api_route("/", dataplane.live, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    # registered before KServe's V2 routes, so it is the one that matches
    app.add_api_route("/v2/models/{model_name}/infer", _v2_infer_route(dataplane), methods=["POST"])
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)
    # Served for every model that implements an OpenAI capability (see ragserve.openai).
    app.include_router(build_openai_router(repository))
    # Triton's generate extension, for models with a generate() method.
    app.include_router(build_generate_router(repository))
    for router in routers:
        app.include_router(router)
    _install_error_handlers(app)
    # Outermost first: size is checked before a request takes a concurrency slot.
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_concurrent_requests)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes, error=PayloadTooLarge)
    return app


def kserve_version() -> str:
    from importlib import metadata

    return metadata.version("kserve")


class _GrpcErrorInterceptor(ExceptionToStatusInterceptor):
    """KServe's interceptor, with ragserve's errors mapped through the same table as REST."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        if isinstance(ex, RagserveError):
            logger.info("grpc %s -> %s: %s", method_name, ex.grpc_code.name, ex.message)
            await context.abort(ex.grpc_code, ex.message)
        if isinstance(ex, (InferenceError, InvalidInput)):
            info = classify(InvalidInput(str(ex)))
            await context.abort(info.grpc_code, info.message)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def build_grpc_server(repository: ModelRepository, settings: ServingSettings) -> grpc.aio.Server:
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.servicer import InferenceServicer

    dataplane = RagserveDataPlane(model_registry=repository)
    servicer = InferenceServicer(dataplane, ModelRepositoryExtension(model_registry=repository))
    server = grpc.aio.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=(_GrpcErrorInterceptor(),),
        options=[
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
            ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    bound = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {settings.host}:{settings.grpc_port}")
    return server


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("ragserve", "kserve", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())
    logging.getLogger("httpx").setLevel("WARNING" if level != "debug" else "DEBUG")
    # KServe logs one "trace" line per request at INFO; keep it for debug.
    logging.getLogger("kserve.trace").setLevel("WARNING" if level != "debug" else "DEBUG")


class ModelServer:
    """Serve loaded models over REST (uvicorn) and gRPC on ``settings.host``.

    Models must be loaded (``ready``) before :meth:`run`, as KServe requires.
    """

    def __init__(self, models: Sequence[Model], settings: ServingSettings, routers: Sequence = ()):
        self.settings = settings
        self.models = list(models)
        self.repository = ModelRepository()
        for model in self.models:
            if not model.ready:
                raise RuntimeError(f"model {model.name!r} is not loaded; call load() before serving")
            self.repository.update(model)
        self.app = build_app(self.repository, settings, routers)
        self.exit_code = 0

    async def serve(self) -> None:
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.http_port,
            log_config=None,
            access_log=self.settings.log_level == "debug",
            timeout_keep_alive=65,
            timeout_graceful_shutdown=10,
        )
        rest = _DeferredSignalServer(config)
        grpc_server = None
        interrupted: list[signal.Signals] = []
        try:
            for model in self.models:
                model.start()
            interrupted = await self._warm_up()
            if not interrupted:
                if self.settings.enable_grpc:
                    grpc_server = build_grpc_server(self.repository, self.settings)
                    await grpc_server.start()
                logger.info(
                    "serving %s on http://%s:%d%s",
                    ", ".join(m.name for m in self.models),
                    self.settings.host,
                    self.settings.http_port,
                    f" and grpc {self.settings.host}:{self.settings.grpc_port}" if grpc_server else "",
                )
                watchdog = asyncio.create_task(self._exit_when_an_engine_dies(rest))
                try:
                    await rest.serve()
                finally:
                    watchdog.cancel()
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            for model in self.models:
                try:
                    model.stop()
                except Exception:  # one model failing to stop must not keep the others running
                    logger.exception("stopping model %s failed", model.name)
        logger.info("stopped")
        rest.reraise_signals()
        for sig in interrupted:
            signal.raise_signal(sig)

    async def _exit_when_an_engine_dies(self, rest: uvicorn.Server, interval_s: float = 1.0) -> None:
        """Stop serving, with exit status 1, ``dead_engine_exit_s`` after a model's engine died.

        A killed vLLM EngineCore or a crashed scheduler thread does not come back in
        this process, and a server that stays live but never ready again is never
        restarted. Until it exits it answers 503 naming the cause (readiness included).
        """
        while not rest.should_exit:
            await asyncio.sleep(interval_s)
            dead = {m.name: reason for m in self.models if (reason := getattr(m, "dead_reason", None))}
            if dead:
                causes = "; ".join(f"{name}: {reason}" for name, reason in dead.items())
                logger.error("engine died (%s); exiting in %.0f s so the server is restarted",
                             causes, self.settings.dead_engine_exit_s)
                await asyncio.sleep(self.settings.dead_engine_exit_s)
                self.exit_code = 1
                rest.should_exit = True
                return

    async def _warm_up(self) -> list[signal.Signals]:
        """Let models pay first-request costs on this loop before the server listens.

        Until it listens, readiness probes fail, as they should. A SIGTERM/SIGINT
        meanwhile (a pod deleted while starting) ends the warm-up; the signals
        caught are returned so :meth:`serve` stops the models before exiting by them.
        """
        warm_ups = [m.warm_up for m in self.models if hasattr(m, "warm_up")]
        if not warm_ups:
            return []
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        caught: list[signal.Signals] = []
        watched = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()

        def on_signal(sig: signal.Signals) -> None:
            caught.append(sig)
            task.cancel()

        for sig in watched:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            for warm_up in warm_ups:
                await warm_up()
        except asyncio.CancelledError:
            if not caught:
                raise
            task.uncancel()
            logger.info("interrupted by %s while warming up", caught[0].name)
        finally:
            for sig in watched:
                loop.remove_signal_handler(sig)
        return caught

    def run(self) -> int:
        """Serve until stopped; the exit status (1 when an engine died)."""
        asyncio.run(self.serve())
        return self.exit_code


class _DeferredSignalServer(uvicorn.Server):
    """uvicorn's server, except that a caught SIGTERM/SIGINT is re-raised only when we say.

    uvicorn re-raises the signal as soon as its own shutdown is done, which with
    the default handler ends the process there, before the ``finally`` after
    ``serve()`` runs: models (a vLLM engine core and its workers) were never
    stopped. :meth:`reraise_signals` keeps the exit status a signal gives, once
    the models are stopped.
    """

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def reraise_signals(self) -> None:
        for sig in reversed(self._captured_signals):
            signal.raise_signal(sig)
