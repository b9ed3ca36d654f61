"""Questions the sample corpus (pipelines/samples) answers: the load the RAG and
embedding benchmarks send, so both measure the same texts."""

SAMPLE_QUESTIONS = [
    "When does the pager rotation hand over?",
    "How often are the Milvus credentials rotated?",
    "What share of traffic does a canary revision get first?",
    "Which GPU runs the production generation predictor?",
    "Under which license is ragserve published?",
    "What is the 0.1.0 release known as internally?",
    "How many tokens does each chunk repeat from the previous one?",
    "What is the most completion tokens one request may ask for?",
]
