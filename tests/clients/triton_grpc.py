"""tritonclient.grpc against a ragserve server, in its own process.

Usage: triton_grpc.py URL MODEL CASE  (JSON result on stdout)
The texts for ``infer`` come as a JSON list on stdin.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, model, case = sys.argv[1:4]
client = grpcclient.InferenceServerClient(url=url)


def infer(name: str, datatype: str, array: np.ndarray, params: dict | None = None) -> dict:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    try:
        res = client.infer(model, [inp], parameters=params)
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "OK", "embedding": res.as_numpy("embedding").tolist()}


if case == "health":
    md = client.get_model_metadata(model, as_json=True)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": md,
    }
elif case == "infer":
    texts = json.loads(sys.stdin.read())
    out = infer("text", "BYTES", np.array([t.encode() for t in texts], dtype=np.object_))
elif case == "bad_name":
    out = infer("txt", "BYTES", np.array([b"hello"], dtype=np.object_))
elif case == "bad_datatype":
    out = infer("text", "FP32", np.array([1.0], dtype=np.float32))
elif case == "bad_utf8":
    out = infer("text", "BYTES", np.array([b"ok", b"\xff\xfe broken"], dtype=np.object_))
elif case == "bad_param":
    out = infer("text", "BYTES", np.array([b"hello"], dtype=np.object_), {"normalize": "yes"})
else:
    raise SystemExit(f"unknown case {case}")
print(json.dumps(out))
