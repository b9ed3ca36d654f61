"""Prometheus metrics ragserve adds to KServe's request histograms."""

from prometheus_client import Counter, Gauge, Histogram

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

BATCH_SIZE = Histogram(
    "ragserve_batch_size",
    "Items per forward pass after adaptive batching",
    ["model_name"],
    buckets=_SIZE_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "ragserve_batch_requests",
    "Requests merged into one batch by the adaptive batcher",
    ["model_name"],
    buckets=_SIZE_BUCKETS,
)
BATCH_QUEUE_SECONDS = Histogram(
    "ragserve_batch_queue_seconds",
    "Time a request waited in the batcher before its forward pass started",
    ["model_name"],
)
RAG_STAGE_SECONDS = Histogram(
    "ragserve_rag_stage_seconds",
    "Time the RAG transformer spends per stage of a request (embed, search, prompt, generate)",
    ["model_name", "stage"],
)
DEPENDENCY_ERRORS = Counter(
    "ragserve_dependency_errors_total",
    "Calls to a downstream dependency that failed",
    ["dependency"],
)
GENERATION_ACTIVE = Gauge(
    "ragserve_generation_active_sequences",
    "Sequences in the running decode batch of a generation engine",
    ["model_name"],
)
GENERATION_CANCELLED = Counter(
    "ragserve_generation_cancelled_total",
    "Sequences dropped before they finished (client disconnected or request timed out)",
    ["model_name"],
)
GENERATION_TOKENS = Counter(
    "ragserve_generation_tokens_total",
    "Tokens through a generation engine, by kind (prompt or completion)",
    ["model_name", "kind"],
)
