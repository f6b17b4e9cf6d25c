"""ExecuTorch backend: ``.pte`` programs (XNNPACK delegate on the CPU) through ``executorch.runtime``.

ExecuTorch is PyTorch's on-device runtime for phones and boards. Its Python runtime takes and returns torch
tensors, so this backend needs torch today (the C++ runtime on a phone does not): ``pip install
'cellsdk[executorch]'``. A ``.pte`` file has no metadata slot; cellsdk stores its metadata in a slot of its own
inside the program (:func:`read_pte_metadata`): a constant method ``cellsdk_metadata`` returning a byte tensor
that starts with :data:`PTE_MAGIC`, then its capacity and the JSON's length (8 bytes each, little-endian), then
the JSON, zero-padded to the capacity. The bytes lie contiguously in the file, so they are read without loading
the program and rewritten in place (the capacity leaves 1 MiB, or the first document's size, of room). The programs cellsdk
converts take a batch of one: a batch runs image by image. ``threads`` sets ExecuTorch's thread pool, which is
process-wide.

Examples:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("model.fp32.pte")  # doctest: +SKIP
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cellsdk.backends.base import Backend, register_backend
from cellsdk.errors import MetadataError, UnsupportedFormatError

__all__ = ["PTE_HEADER", "PTE_MAGIC", "ExecuTorchBackend", "find_pte_metadata", "read_pte_metadata"]

#: the start of cellsdk's metadata slot inside a ``.pte`` program
PTE_MAGIC = b"CELLSDK-METADATA"
#: after the magic: the slot's capacity and the JSON's length, 8 bytes each, little-endian
PTE_HEADER = struct.Struct("<QQ")


def find_pte_metadata(data: bytes, path: str | Path = "model.pte") -> tuple[int, int, int] | None:
    """``(offset of the JSON, its length, the slot's capacity)`` in a ``.pte`` file's bytes, or None without a slot.

    Raises:
        MetadataError: more than one slot, or one whose sizes do not fit the file.

    Examples:
        >>> slot = PTE_MAGIC + PTE_HEADER.pack(8, 2) + b"{}" + bytes(6)
        >>> find_pte_metadata(b"xx" + slot)
        (34, 2, 8)
    """
    start = data.find(PTE_MAGIC)
    if start < 0:
        return None
    if data.find(PTE_MAGIC, start + 1) >= 0:
        raise MetadataError(f"{path}: more than one cellsdk metadata slot; re-convert it")
    offset = start + len(PTE_MAGIC) + PTE_HEADER.size
    capacity, length = PTE_HEADER.unpack_from(data, start + len(PTE_MAGIC))
    if length > capacity or offset + capacity > len(data):
        raise MetadataError(f"{path}: its cellsdk metadata slot is damaged; re-convert it")
    return offset, length, capacity


def read_pte_metadata(path: str | Path) -> str | None:
    """The cellsdk JSON stored in a ``.pte`` program (see the module's doc), or None when it has none.

    Examples:
        >>> read_pte_metadata("model.fp32.pte")[:9]  # doctest: +SKIP
        '{"arch": '
    """
    data = Path(path).read_bytes()
    slot = find_pte_metadata(data, path)
    if slot is None:
        return None
    offset, length, _ = slot
    try:
        return data[offset:offset + length].decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError(f"{path}: its cellsdk metadata is not UTF-8 text; re-convert it") from None


@register_backend("executorch", ".pte", package="executorch", install="pip install 'cellsdk[executorch]'")
class ExecuTorchBackend(Backend):
    """A ``.pte`` program in ExecuTorch's runtime (XNNPACK on the CPU; needs torch for its Python bindings).

    Options:
        threads: the size of ExecuTorch's (process-wide) thread pool.
    """

    devices = ("cpu",)

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None) -> None:
        if str(device).strip().lower() not in ("auto", "cpu"):
            raise UnsupportedFormatError(f"device {device!r}: the executorch backend runs on the CPU (auto or cpu)")
        self.require()
        try:
            import warnings

            with warnings.catch_warnings():  # "this API is experimental", on every import
                warnings.simplefilter("ignore")
                from executorch.runtime import Runtime
        except ImportError as err:  # its Python bindings import torch
            from cellsdk.errors import BackendNotInstalledError

            raise BackendNotInstalledError(f"executorch's runtime failed to import ({err}); its Python bindings need "
                                           "torch: pip install 'cellsdk[executorch]'") from None
        if threads is not None:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        self.metadata_json = read_pte_metadata(path)
        try:
            self._program = Runtime.get().load_program(str(path))
            self._method = self._program.load_method("forward")
        except Exception as err:  # noqa: BLE001 - the runtime raises RuntimeError or ValueError for bad programs
            raise UnsupportedFormatError(f"{path}: not a loadable ExecuTorch program ({str(err).splitlines()[0]})") \
                from None
        meta = self._method.metadata
        inputs = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
        if len(inputs) != 1:
            raise UnsupportedFormatError(f"{path}: expected one image input, the program has {len(inputs)}")
        self.input_shape = tuple(int(d) for d in inputs[0].sizes())
        self.output_count = meta.num_outputs()
        first = meta.output_tensor_meta(0).sizes()
        self.num_outputs = int(first[-1]) if len(first) == 2 else None
        self.device = "CPU (XNNPACK)"
        self._lock = threading.Lock()  # one loaded method runs one call at a time

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        rows: list[list[np.ndarray]] = []
        step = self.input_shape[0] or 1
        for start in range(0, len(batch), step):
            part = torch.from_numpy(np.ascontiguousarray(batch[start:start + step], dtype=np.float32))
            with self._lock:
                outputs: list[Any] = self._method.execute([part])
            rows.append([output.detach().numpy().copy() for output in outputs])
        return [np.concatenate([row[i] for row in rows]) for i in range(len(rows[0]))] if rows else []

    @classmethod
    def read_metadata_json(cls, path: Path) -> str | None:
        return read_pte_metadata(path)
