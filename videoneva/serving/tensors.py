"""Tensors as the Triton models and the client exchange them: numpy arrays by name, text as BYTES.

Each model module declares its contract as `{name: (Triton dtype, dims)}`; config.pbtxt declares
the same tensors (a test holds the two together).
"""
from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

from videoneva.schema import RequestError

Tensors = dict[str, np.ndarray]
Contract = dict[str, tuple[str, list[int]]]

NUMPY_DTYPES = {"TYPE_STRING": np.object_, "TYPE_UINT8": np.uint8, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
                "TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_}


def string_tensor(*texts: str) -> np.ndarray:
    """Strings as a TYPE_STRING (BYTES) tensor of UTF-8."""
    return np.array([t.encode("utf-8") for t in texts], dtype=np.object_)


def json_tensor(obj: Any) -> np.ndarray:
    return string_tensor(json.dumps(obj, ensure_ascii=False))


def strings_of(arr: Optional[np.ndarray], name: str) -> Optional[list[str]]:
    """A BYTES tensor's strings (None when absent); RequestError naming the input when not UTF-8 text."""
    if arr is None:
        return None
    out = []
    for v in np.asarray(arr, dtype=np.object_).reshape(-1):
        if isinstance(v, str):
            out.append(v)
            continue
        try:
            out.append(bytes(v).decode("utf-8"))
        except (TypeError, ValueError):
            raise RequestError(f"input {name!r}: expected UTF-8 text (BYTES), got {type(v).__name__}") from None
    return out


def text_of(arr: Optional[np.ndarray], name: str = "text") -> Optional[str]:
    """The one string of a BYTES tensor (None when absent)."""
    values = strings_of(arr, name)
    if values is None:
        return None
    if len(values) != 1:
        raise RequestError(f"input {name!r}: expected one string, got {len(values)}")
    return values[0]


def json_of(arr: Optional[np.ndarray], name: str = "json") -> Any:
    text = text_of(arr, name)
    return None if text is None else json.loads(text)


def scalar_of(arr: Optional[np.ndarray], name: str) -> Any:
    """The one value of a tensor as a Python scalar (None when absent)."""
    if arr is None:
        return None
    flat = np.asarray(arr).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"input {name!r}: expected one value, got shape {list(np.asarray(arr).shape)}")
    v = flat[0]
    if isinstance(v, (bytes, np.bytes_)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"input {name!r}: not valid UTF-8") from None
    return v.item() if hasattr(v, "item") else v
