"""``EmbeddingPredictor``: a sentence-transformers model behind KServe V1/V2 and OpenAI embeddings."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ragserve.batching import AdaptiveBatcher
from ragserve.predictors.encoders import counting_tokenizer, load_encoder
from ragserve.errors import BadRequest, PayloadTooLarge
from ragserve.kserve_compat import InferRequest, InferResponse, Model
from ragserve.model_assets import PACKAGED_EMBEDDING, ModelFilesNotFound, resolve_embedding_model
from ragserve.openai.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, Usage, encode_vectors
from ragserve.settings import ServingSettings
from ragserve.v2 import as_text, fp32_output, make_response, request_parameters, text_input

logger = logging.getLogger("ragserve.embedding")

INPUT_NAME = "text"
OUTPUT_NAME = "embedding"


class EmbeddingSettings(ServingSettings):
    """Settings of the embedding predictor (env prefix ``RAGSERVE_EMBEDDING_``)."""

    model_config = SettingsConfigDict(env_prefix="RAGSERVE_EMBEDDING_")

    model_name: str = "embedder"
    """Name the model is served under (KServe passes ``--model_name``)."""

    model: str = PACKAGED_EMBEDDING
    """Packaged model name, or a path to any sentence-transformers folder."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs; ``auto`` picks CUDA when present."""

    engine: Literal["auto", "torch", "onnx"] = "auto"
    """``onnx``: ONNX Runtime on CPU (exported once into the cache; torch never imported),
    ``torch``: transformers / sentence-transformers on CPU or CUDA, ``auto``: onnx on CPU when
    ``onnxruntime`` is installed and the model is Transformer + Pooling, torch otherwise."""

    quantize: Literal["none", "int8"] = "none"
    """``int8``: dynamic INT8 weights (onnx engine), kept only if its vectors stay within
    cosine 0.99 of fp32 on a probe set (else loading fails and says so)."""

    normalize: bool = True
    """L2-normalize vectors (a V2 request may override it with parameter ``normalize``)."""

    max_seq_length: int | None = Field(None, gt=0)
    """Tokens per text the model sees; default: the model's own limit."""

    truncate: bool = True
    """Truncate texts over ``max_seq_length``; when false such texts get 400 (V2 parameter ``truncate`` overrides)."""

    batching: bool = True
    """Merge concurrent requests into shared forward passes."""

    max_batch_size: int = Field(32, gt=0)
    """Most texts per forward pass, and per request (larger requests get 413)."""

    max_latency_ms: float = Field(5.0, ge=0)
    """Longest an idle model waits for more requests to join a batch."""

    max_batch_tokens: int = Field(8192, gt=0)
    """Padded-token budget of one forward pass; texts are grouped by length to stay under it."""

    pass_overhead_tokens: int = Field(32, ge=0)
    """Fixed cost of one forward pass, in padded tokens: the length grouping splits a merged
    batch into passes of similar length when the padding it saves is worth more than this."""

    intra_op_threads: int = Field(1, ge=0)
    """Threads one forward pass uses (ONNX Runtime intra-op, torch ``set_num_threads``); 0 = the engine's default."""

    inter_op_threads: int = Field(1, ge=0)
    """Threads running independent operators of a pass in parallel; 0 = the engine's default."""

    torch_threads: int = Field(0, ge=0)
    """Older name of ``intra_op_threads``, kept for existing manifests: when set, it wins."""


def _flag(params: dict, name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter '{name}' must be a boolean, got {value!r}", param=name)
    return value


class EmbeddingPredictor(Model):
    """Text -> vector. One instance serves V1, V2 REST, V2 gRPC and OpenAI through one batcher."""

    def __init__(self, settings: EmbeddingSettings | None = None):
        settings = settings or EmbeddingSettings()
        super().__init__(settings.model_name)
        self.settings = settings
        self.dimension: int | None = None
        self.max_seq_length: int | None = None
        self._encoder = None
        self._tokenizer = None
        self.engine: str | None = None
        self._batcher: AdaptiveBatcher | None = None

    # -- lifecycle -------------------------------------------------------
    def load(self) -> bool:
        s = self.settings
        path = resolve_embedding_model(s.model)
        self._encoder = load_encoder(
            path, s.device, s.max_seq_length, engine=s.engine, quantize=None if s.quantize == "none" else s.quantize,
            intra_op_threads=s.torch_threads or s.intra_op_threads, inter_op_threads=s.inter_op_threads,
        )
        # Requests count tokens on the event loop with their own copy of the Rust
        # tokenizer, called directly (the Python wrapper costs more than the counting).
        self._tokenizer = counting_tokenizer(self._encoder)
        if self._tokenizer is None:
            raise ModelFilesNotFound(f"{path}: the embedding model needs a fast (tokenizer.json) tokenizer")
        self.max_seq_length = self._encoder.max_seq_length
        self.engine = self._encoder.engine
        self.dimension = int(self._encoder.encode(["warm up"]).shape[1])
        self._batcher = AdaptiveBatcher(
            self._encoder.encode,
            model_name=self.name,
            max_batch_size=self.settings.max_batch_size,
            max_latency_ms=self.settings.max_latency_ms,
            max_batch_tokens=self.settings.max_batch_tokens,
            pass_overhead_tokens=self.settings.pass_overhead_tokens,
            enabled=self.settings.batching,
        )
        logger.info(
            "loaded %s with %s on %s: dim=%d max_seq_length=%d",
            path, self._encoder.engine, self._encoder.device, self.dimension, self.max_seq_length,
        )
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self.ready = False

    # -- metadata ---------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.dimension or -1]}]

    # -- the shared path ----------------------------------------------------
    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=True)]

    async def embed(self, texts: list[str], *, normalize: bool | None = None, truncate: bool | None = None) -> tuple[np.ndarray, int]:
        """Embed ``texts`` through the batcher; returns ``(vectors [N, dim], prompt tokens)``."""
        if not texts:
            raise BadRequest("no texts to embed: send at least one", param="input")
        if len(texts) > self.settings.max_batch_size:
            raise PayloadTooLarge(
                f"{len(texts)} texts in one request is over max_batch_size={self.settings.max_batch_size}",
                param="input",
            )
        normalize = self.settings.normalize if normalize is None else normalize
        truncate = self.settings.truncate if truncate is None else truncate
        lengths = self.count_tokens(texts)
        for i, n in enumerate(lengths):
            if n > self.max_seq_length and not truncate:
                raise BadRequest(
                    f"text {i} has {n} tokens, over max_seq_length={self.max_seq_length} (truncation is off)",
                    param=f"input[{i}]",
                )
        lengths = [min(n, self.max_seq_length) for n in lengths]
        rows = await self._batcher.submit(texts, lengths)
        vectors = np.stack(rows).astype(np.float32, copy=False)
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors, int(sum(lengths))

    # -- protocols ----------------------------------------------------------
    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return await self._predict_v1(payload)

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        texts = text_input(request, INPUT_NAME)
        params = request_parameters(request)
        vectors, _ = await self.embed(
            texts,
            normalize=_flag(params, "normalize", self.settings.normalize),
            truncate=_flag(params, "truncate", self.settings.truncate),
        )
        return make_response(request, self.name, [fp32_output(OUTPUT_NAME, vectors)])

    async def _predict_v1(self, body) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            raise BadRequest('V1 body must be {"instances": ["text", ...]}', param="instances")
        texts = [as_text(t, f"instances[{i}]") for i, t in enumerate(body["instances"])]
        vectors, _ = await self.embed(texts)
        return {"predictions": vectors.tolist()}

    async def create_embedding(self, request: EmbeddingRequest, headers: dict | None = None) -> EmbeddingResponse:
        """OpenAI ``POST /openai/v1/embeddings``."""
        inp = request.input
        if isinstance(inp, str):
            texts = [inp]
        elif inp and all(isinstance(t, str) for t in inp):
            texts = list(inp)
        elif not inp:
            raise BadRequest("input is empty: send a string or a non-empty list of strings", param="input")
        else:
            raise BadRequest("token-id input is not supported; send text", param="input")
        if request.dimensions is not None and request.dimensions != self.dimension:
            raise BadRequest(
                f"dimensions={request.dimensions} is not supported: this model returns {self.dimension}",
                param="dimensions",
            )
        vectors, tokens = await self.embed(texts)
        data = [Embedding(index=i, embedding=e) for i, e in enumerate(encode_vectors(vectors, request.encoding_format))]
        return EmbeddingResponse(data=data, model=self.name, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))


def create_server(settings: EmbeddingSettings):
    """Load the predictor and build its server (what ``ragserve serve embedding`` runs)."""
    from ragserve.server import ModelServer

    model = EmbeddingPredictor(settings)
    model.load()
    return ModelServer([model], settings)
