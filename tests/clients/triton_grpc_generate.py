"""tritonclient.grpc against a ragserve generation server, in its own process.

Usage: triton_grpc_generate.py URL MODEL  (stdin: {"texts": [...], "parameters": {...}})
Prints {"status", "text_output", "parameters"} or {"status", "message"} as JSON.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, model = sys.argv[1:3]
request = json.loads(sys.stdin.read())
client = grpcclient.InferenceServerClient(url=url)
texts = request["texts"]
inp = grpcclient.InferInput("text_input", [len(texts)], "BYTES")
inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
try:
    result = client.infer(model, [inp], parameters=request.get("parameters"))
except InferenceServerException as exc:
    out = {"status": exc.status(), "message": exc.message()}
else:
    params = result.get_response().parameters
    out = {
        "status": "OK",
        "text_output": [t.decode() for t in result.as_numpy("text_output")],
        "parameters": {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()},
    }
print(json.dumps(out))
