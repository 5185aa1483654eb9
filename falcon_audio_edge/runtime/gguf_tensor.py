"""One tensor of a GGUF file, found by walking its header: gguf-py's reader turns every metadata value (a
vocabulary's tens of thousands of strings and merges) into numpy arrays first, which costs more memory than the
tensor the CTC head needs. Here the header is only stepped over, and the tensor's rows are read a part at a time
with plain file reads: a memory map of the file would count its pages in this process's resident memory a second
time beside llama.cpp's own map of the same file.

Layout (GGUF v2/v3): magic, version u32, tensor count u64, metadata count u64; each metadata entry a string key, a
u32 type and its value (arrays: element type u32, count u64, elements); each tensor a string name, u32 dims,
u64 sizes, u32 type, u64 offset into the data section, which starts at the next multiple of
``general.alignment`` (32 unless set).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import BundleError

PLAIN_TYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2")}  # ggml F32 and F16: read without gguf-py (145 ms to import)
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
STRING, ARRAY, UINT32 = 8, 9, 4


@dataclass(frozen=True)
class RawTensor:
    type: int  # ggml type (gguf.GGMLQuantizationType)
    shape: tuple[int, ...]  # numpy order: (rows, columns)
    path: Path
    start: int  # the first byte of its data in the file
    row_bytes: int
    n_rows: int

    def rows(self, first: int, stop: int) -> np.ndarray:
        """Rows ``first`` to ``stop`` (clipped to the tensor) as they are stored: (n, bytes per row) uint8."""
        first, stop = max(0, first), min(stop, self.n_rows)
        out = np.empty((max(0, stop - first), self.row_bytes), dtype=np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.start + first * self.row_bytes)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise BundleError(f"{self.path}: the tensor data ends early")
        return out


class _Cursor:
    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise BundleError(f"{self.path}: the GGUF header ends early")
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def string(self) -> bytes:
        n = self.take("<Q")
        start, self.pos = self.pos, self.pos + n
        return bytes(self.buf[start : self.pos])

    def skip_value(self, kind: int) -> None:
        if kind == STRING:
            length = self.take("<Q")
            self.pos += length
            return
        if kind == ARRAY:
            elem, n = self.take("<IQ")
            if elem in SCALAR_BYTES:
                self.pos += SCALAR_BYTES[elem] * n
            else:
                for _ in range(n):
                    self.skip_value(elem)
            return
        if kind not in SCALAR_BYTES:
            raise BundleError(f"{self.path}: unknown GGUF value type {kind}")
        self.pos += SCALAR_BYTES[kind]


def quant_size(kind: int) -> tuple[int, int]:
    """(values per block, bytes per block) of a quantized ggml type, from gguf-py."""
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]


def dequantize_rows(raw: np.ndarray, kind: int, width: int, where: object = "GGUF") -> np.ndarray:
    """Stored rows (n, bytes per row) -> (n, width) float32: F32 and F16 viewed, quantized ones by gguf-py."""
    if kind in PLAIN_TYPES:
        return raw.view(PLAIN_TYPES[kind]).astype(np.float32).reshape(len(raw), width)
    import gguf

    try:
        return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(kind)), np.float32).reshape(-1, width)
    except NotImplementedError:
        raise BundleError(f"{where}: gguf-py cannot dequantize {gguf.GGMLQuantizationType(kind).name} rows") from None


def read_tensor(path: str | Path, name: str) -> RawTensor:
    """The tensor ``name`` of the GGUF at ``path``: its ggml type, numpy shape and bytes (row by row)."""
    path = Path(path)
    try:
        buf = np.memmap(path, dtype=np.uint8, mode="r")  # the header only: dropped on return
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    cur = _Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise BundleError(f"{path} is not a GGUF file")
    cur.pos = 4
    version, n_tensors, n_kv = cur.take("<IQQ")
    if version not in (2, 3):
        raise BundleError(f"{path}: GGUF version {version} is not supported")
    alignment = 32
    for _ in range(n_kv):
        key, kind = cur.string(), cur.take("<I")
        if key == b"general.alignment" and kind == UINT32:
            alignment = cur.take("<I")
        else:
            cur.skip_value(kind)
    found = None
    for _ in range(n_tensors):
        tname = cur.string()
        dims = [cur.take("<Q") for _ in range(cur.take("<I"))]
        kind, offset = cur.take("<IQ")
        if tname == name.encode():
            found = (kind, tuple(reversed(dims)), offset)
    if found is None:
        raise BundleError(f"{path} has no {name} tensor")
    kind, shape, offset = found
    try:
        block, type_bytes = (1, PLAIN_TYPES[kind].itemsize) if kind in PLAIN_TYPES else quant_size(kind)
    except (ValueError, KeyError):
        raise BundleError(f"{path}: {name} has ggml type {kind}, which this gguf-py does not know") from None
    if alignment < 1:
        raise BundleError(f"{path}: general.alignment is {alignment}")
    row_bytes = shape[-1] // block * type_bytes
    start = -(-cur.pos // alignment) * alignment + offset
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if start + rows * row_bytes > len(buf):
        raise BundleError(f"{path}: {name} runs past the end of the file")
    return RawTensor(kind, shape, path, start, row_bytes, rows)


class TokenRows:
    """Rows of a decoder GGUF's token embedding table as llama.cpp's ``get_rows`` makes them (dequantized by
    gguf-py, the same float32 products), read the first time each id is asked for and kept: a prompt's few ids
    come back every turn. Fed as embeddings, a token's row gives the token's own logits."""

    def __init__(self, path: str | Path, hidden: int):
        self.path, self.hidden = Path(path), hidden
        self._tensor: RawTensor | None = None
        self._rows: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # read ahead on a worker (``BundleBackend.preload_ctc``), used on another

    def tensor(self) -> RawTensor:
        """The table's place in the file (the header walked once, 50-100 ms for SmolLM2's)."""
        with self._lock:
            if self._tensor is None:
                tensor = read_tensor(self.path, "token_embd.weight")
                if tensor.shape[-1] != self.hidden:
                    raise BundleError(
                        f"{self.path}: token_embd.weight is {tensor.shape}, the dims say {self.hidden} wide"
                    )
                self._tensor = tensor
            return self._tensor

    def __call__(self, ids: list[int]) -> np.ndarray:
        """The rows of ``ids``, (len(ids), hidden) float32."""
        tensor = self.tensor()
        for i in set(ids) - self._rows.keys():
            if not 0 <= i < tensor.n_rows:
                raise BundleError(f"token id {i} is outside {self.path}'s vocabulary of {tensor.n_rows}")
            self._rows[i] = dequantize_rows(tensor.rows(i, i + 1), tensor.type, self.hidden, self.path)[0]
        return np.stack([self._rows[i] for i in ids]) if ids else np.zeros((0, self.hidden), np.float32)
