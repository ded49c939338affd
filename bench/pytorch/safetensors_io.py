"""Minimal safetensors reader (no `safetensors` package here): 8-byte little-endian header length,
JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian tensor bytes."""
import json
import struct

import numpy as np
import torch

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def load_safetensors(path):
    """Returns {name: torch.Tensor} (BF16 widened to float32, since numpy has no bfloat16)."""
    with open(path, "rb") as f:
        raw = f.read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = raw[base + start:base + end]
        shape = info["shape"]
        if info["dtype"] == "BF16":
            # bfloat16 is the top half of a float32.
            u16 = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32).reshape(shape)
        else:
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
            arr = np.frombuffer(buf, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")).reshape(shape)
        out[name] = torch.from_numpy(arr.copy())
    return out
