"""Reading and writing V2 (Open Inference Protocol) tensors with named errors.

REST JSON delivers BYTES elements as ``str``; REST binary extension and gRPC as
``bytes``. These helpers accept both and turn every malformed tensor into a
:class:`~ragserve.errors.BadRequest` that names the input.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import BadRequest, PayloadTooLarge
from .kserve_compat import InferOutput, InferRequest, InferResponse


# Triton's InferParameter has double_param (field 4) and uint64_param (field 5);
# KServe 0.21's copy of the proto stops at string_param, so a float sent by
# tritonclient.grpc (temperature=0.7) arrives as an unknown field.
_DOUBLE_PARAM, _UINT64_PARAM = 4, 5
_WIRE_FIXED64, _WIRE_VARINT = 1, 0


def _grpc_parameter(parameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    if kind:
        return getattr(parameter, kind)
    from google.protobuf import unknown_fields

    for field in unknown_fields.UnknownFieldSet(parameter):
        if field.field_number == _DOUBLE_PARAM and field.wire_type == _WIRE_FIXED64:
            return struct.unpack("<d", struct.pack("<Q", field.data))[0]
        if field.field_number == _UINT64_PARAM and field.wire_type == _WIRE_VARINT:
            return field.data
    return None


def grpc_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters for a gRPC request: floats travel as ``double_param``, which KServe's own
    conversion rejects ("invalid parameter value") because its proto lacks the field."""
    from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter

    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, float):
            parameter = InferParameter()
            parameter.MergeFromString(bytes([_DOUBLE_PARAM << 3 | _WIRE_FIXED64]) + struct.pack("<d", value))
            out[key] = parameter  # an unknown field here, double_param on the wire
        else:
            out[key] = value
    return out


def request_parameters(request: InferRequest) -> dict[str, Any]:
    """Request-level ``parameters`` as a plain dict, from REST or gRPC (doubles and uint64s included)."""
    params = request.parameters
    if not params:
        return {}
    return {key: _grpc_parameter(val) if hasattr(val, "WhichOneof") else val for key, val in params.items()}


def _elements(inp) -> list:
    if getattr(inp, "_raw_data", None) is not None:
        return list(inp.as_numpy().reshape(-1))
    data = inp.data
    if data is None:
        return []
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1))
    return list(data)


def text_input(request: InferRequest, name: str, *, max_items: int | None = None) -> list[str]:
    """The BYTES input ``name`` of shape ``[N]`` (or ``[N, 1]``) as a list of str."""
    names = [i.name for i in request.inputs]
    matches = [i for i in request.inputs if i.name == name]
    if not matches:
        raise BadRequest(f"input '{name}' is required (got inputs {names})", param=name)
    if len(matches) > 1:
        raise BadRequest(f"input '{name}' is given more than once", param=name)
    inp = matches[0]
    if inp.datatype != "BYTES":
        raise BadRequest(f"input '{name}' must have datatype BYTES, got {inp.datatype}", param=name)
    shape = list(inp.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(d < 0 for d in shape):
        raise BadRequest(f"input '{name}' must have shape [N] or [N, 1], got {shape}", param=name)
    values = _elements(inp)
    if len(values) != math.prod(shape):
        raise BadRequest(
            f"input '{name}' has shape {shape} but {len(values)} elements", param=name
        )
    if not values:
        raise BadRequest(f"input '{name}' is empty: send at least one text", param=name)
    if max_items is not None and len(values) > max_items:
        raise PayloadTooLarge(
            f"input '{name}' has {len(values)} texts, over the limit of {max_items} per request", param=name
        )
    return [as_text(v, f"{name}[{i}]") for i, v in enumerate(values)]


def as_text(value: Any, where: str) -> str:
    """Decode one BYTES element; non-UTF-8 is the client's error, named by position."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"{where} is not valid UTF-8 ({exc.reason} at byte {exc.start})", param=where) from None
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # lone surrogates from JSON escapes
        except UnicodeEncodeError:
            raise BadRequest(f"{where} is not valid UTF-8 (lone surrogate)", param=where) from None
        return value
    raise BadRequest(f"{where} must be a string, got {type(value).__name__}", param=where)


def bytes_output(name: str, values: Sequence[str], *, parameters: Mapping | None = None) -> InferOutput:
    out = InferOutput(name=name, shape=[len(values)], datatype="BYTES", parameters=dict(parameters or {}))
    out.set_data_from_numpy(np.array([v.encode("utf-8") for v in values], dtype=np.object_), binary_data=False)
    return out


def fp32_output(name: str, array: np.ndarray) -> InferOutput:
    array = np.ascontiguousarray(array, dtype=np.float32)
    # a flat list (tolist() is C-fast; KServe's own conversion goes element by element),
    # which KServe turns into JSON, the REST binary extension or gRPC raw alike
    return InferOutput(name=name, shape=list(array.shape), datatype="FP32", data=array.reshape(-1).tolist())


def make_response(request: InferRequest, model_name: str, outputs: list[InferOutput], **kw) -> InferResponse:
    """An InferResponse that answers gRPC in raw (binary) form, which tritonclient.grpc requires."""
    return InferResponse(
        response_id=request.id or "",
        model_name=model_name,
        infer_outputs=outputs,
        use_binary_outputs=request.use_binary_outputs or request.from_grpc,
        requested_outputs=request.request_outputs,
        **kw,
    )
