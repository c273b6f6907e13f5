"""Convert MediaPipe's BlazeFace short-range `.tflite` into our safetensors weights.

    python -m scripts.convert_blazeface PATH/face_detection_short_range.tflite \
        [--out models/blazeface_weights/blazeface_short_range.safetensors]

The source is `mediapipe/modules/face_detection/face_detection_short_range.tflite` from
the `mediapipe==0.10.21` wheel (`pip download mediapipe==0.10.21 --no-deps`), Apache-2.0
(see `models/blazeface_weights/NOTICE`). The file is read with a small FlatBuffers reader
of our own (only the tables needed: model → subgraph → tensors → buffers); each weight is
stored under the name `models/blazeface.py` uses, in PyTorch layout, as the float16 values
the file holds (the graph dequantises them to float32 before use, as our loader does).
The sha256 of the source is stored in the safetensors metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path("models/blazeface_weights/blazeface_short_range.safetensors")
_TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32}


class _Table:
    """A FlatBuffers table: fields by index, following offsets the format's way."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vtable_len:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return self.pos + offset if offset else None

    def _target(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def vector_bytes(self, index: int) -> bytes:
        at = self._target(index)
        if at is None:
            return b""
        length = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4 : at + 4 + length]

    def vector_ints(self, index: int) -> list[int]:
        at = self._target(index)
        if at is None:
            return []
        length = struct.unpack_from("<I", self.buf, at)[0]
        return list(struct.unpack_from(f"<{length}i", self.buf, at + 4))

    def tables(self, index: int) -> list[_Table]:
        at = self._target(index)
        if at is None:
            return []
        length = struct.unpack_from("<I", self.buf, at)[0]
        out = []
        for i in range(length):
            element = at + 4 + 4 * i
            out.append(_Table(self.buf, element + struct.unpack_from("<I", self.buf, element)[0]))
        return out

    def string(self, index: int) -> str:
        return self.vector_bytes(index).decode()


def read_tflite_tensors(data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of the first subgraph that has constant data, by name (tflite layout)."""
    if data[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (identifier TFL3 missing)")
    model = _Table(data, struct.unpack_from("<I", data, 0)[0])
    # Model: 2 subgraphs, 4 buffers. SubGraph: 0 tensors. Tensor: 0 shape, 1 type,
    # 2 buffer, 3 name. Buffer: 0 data.
    buffers = model.tables(4)
    tensors: dict[str, np.ndarray] = {}
    for tensor in model.tables(2)[0].tables(0):
        raw = buffers[tensor.scalar(2, "I")].vector_bytes(0)
        dtype = _TFLITE_DTYPES.get(tensor.scalar(1, "b"))
        if not raw or dtype is None:
            continue
        shape = tensor.vector_ints(0)
        tensors[tensor.string(3)] = np.frombuffer(raw, dtype).reshape(shape).copy()
    return tensors


def to_torch_layout(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our names and PyTorch layouts for the model's weights (see `models/blazeface.py`).

    TFLite conv kernels are (out, kh, kw, in) and depthwise kernels (1, kh, kw, ch);
    PyTorch's are (out, in, kh, kw) and (ch, 1, kh, kw).
    """
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not name.endswith(("/Kernel", "/Bias")):
            continue
        layer, kind = name.rsplit("/", 1)
        if kind == "Kernel":
            if layer.startswith("depthwise_conv2d"):
                value = value.transpose(3, 0, 1, 2)
            else:
                value = value.transpose(0, 3, 1, 2)
        out[f"{layer}.{'weight' if kind == 'Kernel' else 'bias'}"] = np.ascontiguousarray(value)
    return out


def main() -> None:
    """Convert (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tflite", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    from safetensors.numpy import save_file

    data = args.tflite.read_bytes()
    weights = to_torch_layout(read_tflite_tensors(data))
    sha = hashlib.sha256(data).hexdigest()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(args.out), metadata={"source": args.tflite.name, "source_sha256": sha})
    print(f"{len(weights)} tensors from {args.tflite} (sha256 {sha}) -> {args.out}")


if __name__ == "__main__":
    main()
