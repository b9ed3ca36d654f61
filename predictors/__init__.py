"""KServe predictors: embedding and LLM generation."""
