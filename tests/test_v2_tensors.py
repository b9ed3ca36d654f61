"""V2 tensor and parameter helpers, through KServe's own REST and gRPC conversions."""

import numpy as np
import pytest

from ragserve.errors import BadRequest
from ragserve.kserve_compat import InferInput, InferRequest
from ragserve.v2 import grpc_parameters, request_parameters, text_input


def _grpc_round_trip(request: InferRequest) -> InferRequest:
    message = request.to_grpc()
    return InferRequest.from_grpc(type(message).FromString(message.SerializeToString()))


def test_float_parameters_survive_grpc_although_kserves_proto_lacks_double_param():
    params = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 5, "stop": "\n", "ignore_eos": True}
    request = InferRequest("m", [InferInput("text_input", [1], "BYTES", data=[b"q"])], parameters=grpc_parameters(params))
    assert request_parameters(_grpc_round_trip(request)) == params


def test_text_input_accepts_str_and_bytes_and_names_bad_utf8():
    rest = InferRequest("m", [InferInput("text", [2], "BYTES", data=["a", "b"])])
    assert text_input(rest, "text") == ["a", "b"]
    grpc = _grpc_round_trip(InferRequest("m", [InferInput("text", [2], "BYTES", data=[b"a", "\u00e9".encode()])]))
    assert text_input(grpc, "text") == ["a", "\u00e9"]
    bad = InferRequest("m", [InferInput("text", [1], "BYTES", data=[b"\xff"])])
    with pytest.raises(BadRequest, match=r"text\[0\] is not valid UTF-8"):
        text_input(bad, "text")


def test_binary_bytes_tensor_is_read_too():
    inp = InferInput("text", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"x"], [b"y"]], dtype=np.object_), binary_data=True)
    assert text_input(InferRequest("m", [inp]), "text") == ["x", "y"]
