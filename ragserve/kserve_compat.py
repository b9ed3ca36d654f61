"""Import KServe without letting it read our command line.

``kserve.model_server`` parses ``sys.argv`` at import time (and builds a global
FastAPI app). ragserve has its own CLI, so an unrelated flag such as
``--predictor_protocol rest`` would make KServe's parser exit the process.
Every ragserve module imports KServe through here.
"""

from __future__ import annotations

import sys

_saved_argv = sys.argv
sys.argv = sys.argv[:1]
try:
    import kserve  # noqa: E402
    from kserve import InferInput, InferOutput, InferRequest, InferResponse, Model  # noqa: E402
    from kserve.errors import (  # noqa: E402
        InferenceError,
        InvalidInput,
        ModelNotFound,
        ModelNotReady,
        ServerNotLive,
        ServerNotReady,
        UnsupportedProtocol,
    )
    from kserve.model_repository import ModelRepository  # noqa: E402
    from kserve.protocol.dataplane import DataPlane  # noqa: E402
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
finally:
    sys.argv = _saved_argv

__all__ = [
    "kserve",
    "Model",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "ModelRepository",
    "DataPlane",
    "ModelRepositoryExtension",
    "InferenceError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "ServerNotLive",
    "ServerNotReady",
    "UnsupportedProtocol",
]
