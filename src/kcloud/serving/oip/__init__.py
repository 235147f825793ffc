"""Open Inference Protocol v2 tensor codec (KServe/Triton REST), with Triton's binary tensor data.

Pure functions over bytes and numpy arrays: the gateway and the clients do the HTTP. See
docs/oip.md for what is supported and how datatypes map.
"""

from kcloud.datatypes import DATATYPE_TO_NUMPY, numpy_to_datatype
from kcloud.serving.oip.client import decode_infer_response, encode_infer_request
from kcloud.serving.oip.errors import CodecError
from kcloud.serving.oip.server import (
    InferRequest,
    RequestedOutput,
    check_requested_outputs,
    decode_infer_request,
    encode_infer_response,
    utf8_strings,
)
from kcloud.serving.oip.tensors import (
    BINARY_CONTENT_TYPE,
    INFERENCE_HEADER_CONTENT_LENGTH,
    JSON_CONTENT_TYPE,
    parse_header_length,
)

__all__ = [
    "BINARY_CONTENT_TYPE",
    "DATATYPE_TO_NUMPY",
    "INFERENCE_HEADER_CONTENT_LENGTH",
    "JSON_CONTENT_TYPE",
    "CodecError",
    "InferRequest",
    "RequestedOutput",
    "check_requested_outputs",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "numpy_to_datatype",
    "parse_header_length",
    "utf8_strings",
]
