"""Prometheus metrics ragserve adds to KServe's request histograms."""

from prometheus_client import Counter, Histogram

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
DEPENDENCY_ERRORS = Counter(
    "ragserve_dependency_errors_total",
    "Calls to a downstream dependency that failed",
    ["dependency"],
)
