"""Arrays inside the one metadata JSON document: little-endian bytes as base64, with their dtype and shape.

The guard's fitted statistics and the test vectors' reference outputs travel in every artefact's metadata this way.

Examples:
    >>> record = encode_array(np.arange(3))
    >>> record["shape"], decode_array(record, "example").tolist()
    ([3], [0.0, 1.0, 2.0])
    >>> without_arrays({"x": record})
    {'x': {'dtype': 'float32', 'shape': [3]}}
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from cellsdk.errors import MetadataError

__all__ = ["decode_array", "encode_array", "without_arrays"]


def encode_array(array: np.ndarray, dtype: str = "float32") -> dict[str, Any]:
    """A JSON-ready record of an array (little-endian bytes, base64).

    Examples:
        >>> encode_array(np.zeros(2), "float16")
        {'dtype': 'float16', 'shape': [2], 'base64': 'AAAAAA=='}
    """
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(data.shape), "base64": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(record: Any, name: str) -> np.ndarray:
    """The array of :func:`encode_array`; MetadataError naming ``name`` if the record is malformed.

    Examples:
        >>> decode_array({"dtype": "float16", "shape": [2], "base64": "AAAAAA=="}, "example").tolist()
        [0.0, 0.0]
    """
    try:
        dtype = np.dtype(str(record["dtype"])).newbyteorder("<")
        shape = tuple(int(s) for s in record["shape"])
        array = np.frombuffer(base64.b64decode(record["base64"], validate=True), dtype=dtype)
        return array.reshape(shape).astype(np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise MetadataError(f"{name} is malformed ({err}): re-convert the model") from None


def without_arrays(record: Any) -> Any:
    """``record`` with every base64 array replaced by its dtype and shape (for manifests and ``cellsdk info``).

    Examples:
        >>> without_arrays({"a": {"dtype": "float32", "shape": [2], "base64": "AAAAAAAAAAA="}})
        {'a': {'dtype': 'float32', 'shape': [2]}}
    """
    if isinstance(record, dict):
        if "base64" in record:
            return {k: v for k, v in record.items() if k != "base64"}
        return {k: without_arrays(v) for k, v in record.items()}
    if isinstance(record, list):
        return [without_arrays(v) for v in record]
    return record
