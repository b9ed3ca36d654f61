"""Ingestion: documents -> chunks -> embeddings -> Milvus."""
