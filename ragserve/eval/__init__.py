"""Quality evaluation of a RAG endpoint on a labeled question set (``ragserve eval``)."""
