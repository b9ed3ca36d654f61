"""``RagTransformer``: question -> retrieved chunks -> prompt -> generation predictor -> answer + sources.

A KServe transformer: ``preprocess`` embeds the question (embedding
predictor), searches Milvus and fits a prompt with numbered sources into the
generator's context; ``predict`` sends it to the generation predictor at
``--predictor_host`` over ``--predictor_protocol`` (``v2`` or ``grpc-v2``);
``postprocess`` returns the answer with its sources. The same steps serve
OpenAI ``/openai/v1/chat/completions``, streaming included (see
:mod:`.chat`). All three clients are constructor arguments; ``load()`` makes
the default ones from settings.

V2 contract::

    inputs:  text_input  BYTES [N]   the questions
    params:  top_k, filter, score_threshold (retrieval); max_tokens,
             temperature, top_p, stop, seed (generation)
    outputs: text_output BYTES [N]   the answers
             sources     BYTES [M]   one JSON object per source used (``index`` = which question)
    response parameters: prompt_tokens, completion_tokens, embed_ms, search_ms, generate_ms
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from ragserve.errors import BadRequest, describe_validation_errors
from ragserve.kserve_compat import InferRequest, InferResponse, Model
from ragserve.metrics import RAG_STAGE_SECONDS
from ragserve.model_assets import PACKAGED_GENERATION, generation_tokenizer
from ragserve.openai.completions import SamplingOptions
from ragserve.settings import ServingSettings
from ragserve.v2 import bytes_output, make_response, request_parameters, text_input

from .attribution import citation_suffix
from .clients import EmbeddingClient, GenerationClient, GrpcGenerationClient, trace_headers
from .milvus_store import Hit, MilvusSettings, MilvusStore
from .prompt import DEFAULT_SOURCE_TEMPLATE, DEFAULT_TEMPLATE, Prompt, PromptBuilder, check_source_template, check_template
from .rerank import rerank

logger = logging.getLogger("ragserve.rag")

INPUT_NAME = "text_input"
OUTPUT_NAME = "text_output"
SOURCES_NAME = "sources"
# Set by Triton clients on every request: protocol plumbing, not options.
_PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"})


class RagTransformerSettings(ServingSettings, MilvusSettings):
    """Settings of the RAG transformer (env prefix ``RAGSERVE_RAG_``)."""

    model_config = SettingsConfigDict(env_prefix="RAGSERVE_RAG_")

    model_name: str = "rag"
    """Name the model is served under (KServe passes ``--model_name``)."""

    predictor_host: str = "127.0.0.1:8090"
    """``host:port`` of the generation predictor (KServe passes ``--predictor_host``)."""

    predictor_protocol: Literal["v2", "grpc-v2"] = "v2"
    """How ``predict`` reaches the generation predictor: V2 REST or V2 gRPC."""

    predictor_use_ssl: bool = False
    """Use https to reach the predictor (KServe passes ``--predictor_use_ssl``)."""

    predictor_model_name: str | None = None
    """Model name at the predictor; default: ``model_name`` (KServe gives transformer and predictor one name)."""

    predictor_http_host: str | None = None
    """REST ``host:port`` of the predictor for streamed chat; default ``predictor_host`` (set it with ``grpc-v2``)."""

    generation_timeout_s: float = Field(120.0, gt=0)
    """Timeout of one call to the generation predictor (the whole answer when not streaming)."""

    embedding_url: str = "http://127.0.0.1:8080"
    """Base URL of the embedding predictor (its V2 REST endpoint)."""

    embedding_model: str = "embedder"
    """Model name at the embedding predictor."""

    top_k: int = Field(5, ge=1, le=100)
    """Chunks retrieved per question (V2 parameter / OpenAI ``retrieval.top_k`` overrides)."""

    score_threshold: float | None = None
    """Drop chunks below this similarity (per-request ``score_threshold`` overrides)."""

    rerank_candidates: int = Field(0, ge=0, le=100)
    """Chunks fetched per question and reordered by keyword overlap before keeping ``top_k`` (0: vector order only)."""

    lexical_weight: float = Field(1.0, ge=0)
    """Weight of keyword overlap (0..1) against vector similarity when ``rerank_candidates`` is set."""

    filter: str = ""
    """Milvus filter expression every search applies, e.g. ``lang == "en"``; a request's filter is ANDed to it."""

    ef: int = Field(64, ge=1)
    """HNSW search breadth (larger: better recall, slower)."""

    nprobe: int = Field(16, ge=1)
    """IVF clusters searched (IVF_FLAT indexes)."""

    prompt_template: str = DEFAULT_TEMPLATE
    """Prompt with ``{sources}`` (numbered chunks) and ``{question}``."""

    system_message: str = ""
    """System turn before the prompt (without ``chat_template``: its first paragraph); empty: the chat template's default."""

    source_template: str = DEFAULT_SOURCE_TEMPLATE
    """How each source is written into ``{sources}``: ``{n}`` (citation number), ``{title}``, ``{text}``."""

    source_order: Literal["best_first", "best_last"] = "best_first"
    """Order of the sources in the prompt; ``best_last`` puts the best one next to the question. ``[1]`` is the best either way."""

    attribute_citations: bool = False
    """When an answer cites no ``[n]``, append the number of the source it was taken from (see :mod:`.attribution`)."""

    stop: str = ""
    """Stop sequence when a request does not give ``stop`` (one string: V2 parameters are scalars), e.g. a newline."""

    chat_template: bool = True
    """Wrap the prompt in the tokenizer's chat template (instruct models)."""

    tokenizer: str = PACKAGED_GENERATION
    """Tokenizer that counts prompt tokens: a packaged model name or a local folder; use the generator's."""

    context_tokens: int = Field(2048, gt=0)
    """The generator's context window; prompt plus ``max_tokens`` must fit in it."""

    max_tokens: int = Field(256, gt=0)
    """Completion tokens when a request does not say; reserved out of ``context_tokens``."""

    temperature: float = Field(0.0, ge=0, le=2)
    """Sampling temperature when a request does not say: 0 (greedy) keeps answers close to the sources."""

    max_questions: int = Field(16, gt=0)
    """Most questions in one V2 request (more get 413)."""

    snippet_chars: int = Field(240, ge=0)
    """Characters of each source's text returned as its snippet."""

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)

    @field_validator("source_template")
    @classmethod
    def _source_template(cls, value: str) -> str:
        return check_source_template(value)


class RetrievalOptions(BaseModel):
    """Per-request retrieval settings: V2 parameters, or the OpenAI ``retrieval`` extra field."""

    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: int | None = Field(None, ge=1, le=100)
    filter: str | None = None
    score_threshold: float | None = None


@dataclass
class RagPlan:
    """What ``preprocess`` hands ``predict``: prompts for the generator, and what they were built from."""

    prompts: list[Prompt]
    parameters: dict
    headers: dict
    request: InferRequest | None = None
    timings: dict = field(default_factory=dict)


@dataclass
class RagAnswer:
    plan: RagPlan
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int


def source_json(hit: Hit, *, index: int, rank: int, snippet_chars: int) -> dict:
    snippet = hit.text if len(hit.text) <= snippet_chars else hit.text[:snippet_chars].rstrip() + "…"
    return {
        "index": index,
        "rank": rank,
        "doc_id": hit.doc_id,
        "chunk_id": hit.chunk_id,
        "chunk_index": hit.chunk_index,
        "score": round(hit.score, 6),
        "title": hit.title,
        "uri": hit.uri,
        "snippet": snippet,
    }


class _Stage:
    """Time one stage into ``timings`` (ms, returned to the client) and the stage histogram."""

    def __init__(self, model: str, stage: str, timings: dict):
        self.model, self.stage, self.timings = model, stage, timings

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.t0
        self.timings[f"{self.stage}_ms"] = round(seconds * 1000, 3)
        RAG_STAGE_SECONDS.labels(model_name=self.model, stage=self.stage).observe(seconds)


class RagTransformer(Model):
    """Retrieval-augmented generation in front of a generation predictor."""

    def __init__(
        self,
        settings: RagTransformerSettings | None = None,
        *,
        embedder: EmbeddingClient | None = None,
        store: MilvusStore | None = None,
        generator: GenerationClient | None = None,
        tokenizer=None,
    ):
        settings = settings or RagTransformerSettings()
        super().__init__(settings.model_name)
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.generator = generator
        self.tokenizer = tokenizer
        self.prompt: PromptBuilder | None = None
        self.dimension: int | None = None
        self.search_params: dict = {}

    # -- lifecycle -------------------------------------------------------
    def load(self) -> bool:
        s = self.settings
        # httpx logs every downstream call at INFO: two lines per question.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        if self.tokenizer is None:
            self.tokenizer = generation_tokenizer(s.tokenizer)
        self.prompt = PromptBuilder(
            self.tokenizer, s.prompt_template, chat_template=s.chat_template, system_message=s.system_message,
            source_template=s.source_template, best_last=s.source_order == "best_last",
        )
        if self.embedder is None:
            self.embedder = EmbeddingClient(s.embedding_url, s.embedding_model, timeout_s=s.timeout_s, retries=s.retries)
        if self.generator is None:
            scheme = "https://" if s.predictor_use_ssl else ""
            cls = GrpcGenerationClient if s.predictor_protocol == "grpc-v2" else GenerationClient
            self.generator = cls(
                scheme + s.predictor_host,
                s.predictor_model_name or s.model_name,
                timeout_s=s.generation_timeout_s,
                retries=s.retries,
                http_host=scheme + s.predictor_http_host if s.predictor_http_host else None,
            )
        if self.store is None:
            self.store = MilvusStore(s)
        # A collection built with another embedding model fails here, not on the first question.
        self.dimension = asyncio.run(self.embedder.dimension())
        info = self.store.check_collection(self.dimension, s.embedding_model)
        index_type = info.get("index_type") or s.index_type
        self.search_params = {"HNSW": {"ef": s.ef}, "IVF_FLAT": {"nprobe": s.nprobe}}.get(index_type, {})
        logger.info(
            "rag ready: collection %s (%d-d, %s) at %s, generator %s over %s",
            s.collection, self.dimension, index_type, s.milvus_uri, s.predictor_host, s.predictor_protocol,
        )
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self.store is not None:
            self.store.close()
        for client in (self.embedder, self.generator):
            if client is not None:
                try:
                    asyncio.get_running_loop().create_task(client.aclose())
                except RuntimeError:  # no loop left: the pooled connections die with the process
                    pass
        self.ready = False

    # -- metadata ---------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]},
            {"name": SOURCES_NAME, "datatype": "BYTES", "shape": [-1]},
        ]

    def validate(self, payload):
        # KServe's validate() inspects dict payloads for a predictor it calls
        # itself; ours is a RagPlan and goes to the injected client.
        return payload

    # -- retrieval + prompt (shared by V2 and OpenAI) --------------------------
    def options(self, overrides: RetrievalOptions | None) -> tuple[int, str, float | None]:
        s, o = self.settings, overrides or RetrievalOptions()
        parts = [f"({f})" for f in (s.filter, o.filter) if f]
        threshold = o.score_threshold if o.score_threshold is not None else s.score_threshold
        return o.top_k or s.top_k, " and ".join(parts), threshold

    async def retrieve(self, questions: Sequence[str], options: RetrievalOptions | None, headers: dict, timings: dict) -> list[list[Hit]]:
        top_k, expr, threshold = self.options(options)
        with _Stage(self.name, "embed", timings):
            vectors = await self.embedder.embed(questions, headers)
        fetch = max(top_k, self.settings.rerank_candidates)
        with _Stage(self.name, "search", timings):
            hits = await asyncio.to_thread(
                self.store.search, vectors.tolist(), top_k=fetch, filter=expr, score_threshold=threshold,
                search_params=self.search_params,
            )
        if fetch == top_k:
            return hits
        weight = self.settings.lexical_weight
        return [rerank(q, h, top_k=top_k, weight=weight) for q, h in zip(questions, hits)]

    def budget(self, max_tokens: int) -> int:
        budget = self.settings.context_tokens - max_tokens
        if budget <= 0:
            raise BadRequest(
                f"max_tokens={max_tokens} leaves no room for a prompt in context_tokens={self.settings.context_tokens}",
                param="max_tokens",
            )
        return budget

    async def plan(
        self,
        questions: Sequence[str],
        *,
        options: RetrievalOptions | None,
        sampling: dict,
        headers: Mapping[str, str] | None,
        history: Sequence[dict] = (),
    ) -> RagPlan:
        """Retrieve for each question and build its prompt (the whole of ``preprocess``)."""
        sampling = {
            "temperature": self.settings.temperature,
            **({"stop": self.settings.stop} if self.settings.stop else {}),
            **{k: v for k, v in sampling.items() if v is not None},
            "max_tokens": sampling.get("max_tokens") or self.settings.max_tokens,
        }
        budget = self.budget(sampling["max_tokens"])
        downstream = trace_headers(headers)
        timings: dict = {}
        hits = await self.retrieve(questions, options, downstream, timings)
        with _Stage(self.name, "prompt", timings):
            prompts = [self.prompt.fit(q, h, budget, history) for q, h in zip(questions, hits)]
        return RagPlan(prompts, sampling, downstream, timings=timings)

    def citation(self, prompt: Prompt, answer: str) -> str:
        """What ``attribute_citations`` appends to ``answer`` (`` [n]``, or empty; always empty when off)."""
        if not self.settings.attribute_citations:
            return ""
        return citation_suffix(prompt.question, answer, prompt.sources)

    def sources(self, plan: RagPlan) -> list[dict]:
        n = self.settings.snippet_chars
        return [
            source_json(hit, index=i, rank=r + 1, snippet_chars=n)
            for i, p in enumerate(plan.prompts)
            for r, hit in enumerate(p.sources)
        ]

    # -- KServe transformer hooks ---------------------------------------------
    async def preprocess(self, payload, headers: dict | None = None) -> RagPlan:
        if not isinstance(payload, InferRequest):
            raise BadRequest('send a V2 request with a BYTES input "text_input" (V1 is not served)')
        questions = text_input(payload, INPUT_NAME, max_items=self.settings.max_questions)
        params = {k: v for k, v in request_parameters(payload).items() if k not in _PROTOCOL_PARAMETERS}
        retrieval = {k: params.pop(k) for k in list(params) if k in RetrievalOptions.model_fields}
        options = _validated(RetrievalOptions, retrieval)
        sampling = _validated(SamplingOptions, params).model_dump(exclude_defaults=True)
        plan = await self.plan(questions, options=options, sampling=sampling, headers=headers)
        plan.request = payload
        return plan

    async def predict(self, plan: RagPlan, headers=None, response_headers=None) -> RagAnswer:
        with _Stage(self.name, "generate", plan.timings):
            result = await self.generator.generate([p.text for p in plan.prompts], plan.parameters, plan.headers)
        return RagAnswer(plan, result.texts, result.prompt_tokens, result.completion_tokens)

    async def postprocess(self, answer: RagAnswer, headers=None, response_headers=None) -> InferResponse:
        plan = answer.plan
        outputs = [
            bytes_output(OUTPUT_NAME, [t + self.citation(p, t) for p, t in zip(plan.prompts, answer.texts)]),
            bytes_output(SOURCES_NAME, [json.dumps(s, ensure_ascii=False) for s in self.sources(plan)]),
        ]
        parameters = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "request_id": plan.headers["x-request-id"],
            **plan.timings,
        }
        return make_response(plan.request, self.name, outputs, parameters=parameters)

    # -- OpenAI ---------------------------------------------------------------
    @property
    def request_types(self) -> dict:
        """OpenAI bodies this model extends (read by the router): chat takes ``retrieval``."""
        from .chat import RagChatCompletionRequest

        return {"chat.completions": RagChatCompletionRequest}

    async def create_chat_completion(self, request, headers: dict | None = None):
        """OpenAI ``POST /openai/v1/chat/completions`` with retrieval; see :mod:`.chat`."""
        from .chat import chat_completion

        return await chat_completion(self, request, headers)


def _validated(cls: type[BaseModel], values: dict) -> BaseModel:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"]
        raise BadRequest(
            f"invalid parameters: {describe_validation_errors(exc.errors(include_url=False))}",
            param=str(first[0]) if first else None,
        ) from None


def create_server(settings: RagTransformerSettings):
    """Load the transformer and build its server (what ``ragserve serve rag-transformer`` runs)."""
    from ragserve.server import ModelServer

    model = RagTransformer(settings)
    model.load()
    return ModelServer([model], settings)
