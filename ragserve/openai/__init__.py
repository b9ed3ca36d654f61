"""OpenAI-compatible routes served without vLLM (``/openai/v1/...``).

Models opt in by implementing the methods of :mod:`ragserve.openai.capabilities`;
:func:`ragserve.openai.router.build_openai_router` dispatches by the request's
``model`` field.
"""
