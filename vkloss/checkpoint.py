"""Checkpoints: tensors and an optimizer's state in one safetensors file, written atomically.

    vkloss.save("run.safetensors", {"w1": w1, "b1": b1}, optimizer=opt, metadata={"epoch": 3})
    metadata = vkloss.load("run.safetensors", {"w1": w1, "b1": b1}, optimizer=opt)

The format is safetensors (an 8-byte header length, a JSON header naming each tensor's dtype, shape and byte range,
then the bytes), the ecosystem's format for tensors: the `safetensors` package and PyTorch users read the tensors
as they are. It is written here in a few lines rather than adding a dependency. The optimizer's state is stored as
tensors named `optimizer.<parameter index>.<name>` (PyTorch's names: `exp_avg`, `exp_avg_sq`, `momentum_buffer`,
`step`) and its hyperparameters in the header's metadata, with `metadata` as JSON.

A file is written to a temporary name in the same folder, flushed to disk, then renamed over the old one: a process
killed while writing leaves the last good checkpoint. Loading checks every tensor's presence, dtype and shape
first, and a truncated or foreign file, before anything is copied: a bad file raises ValueError naming the tensor,
and the tensors keep their values.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from .tensor import BFLOAT16, Tensor, dtype_name

_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int32": "I32"}
_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32}  # bfloat16: its raw bits
OPTIMIZER = "optimizer"


def _raw(tensor: Tensor) -> tuple[str, np.ndarray]:
    """(safetensors dtype, the values as stored) of a device tensor: bfloat16 as its 16-bit patterns."""
    values = tensor.numpy()
    if tensor.dtype == BFLOAT16:
        return "BF16", (np.ascontiguousarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return _DTYPES[dtype_name(tensor.dtype)], np.ascontiguousarray(values)


def write(path, arrays: dict, metadata: dict) -> None:
    """arrays: name -> (safetensors dtype, numpy array); metadata: str -> str. Atomic: temporary file, then rename."""
    header, offset = {}, 0
    for name, (dtype, array) in arrays.items():
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-aligned
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for _, array in arrays.values():
                f.write(array.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read(path) -> tuple[dict, dict, dict]:
    """(name -> numpy array as stored, name -> its safetensors dtype, metadata) of a safetensors file; ValueError for
    a truncated or foreign one."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a checkpoint (safetensors) file: {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"{path}: truncated, or not a safetensors file: its header says {size:,} bytes, the file has "
                         f"{len(data) - 8:,} after the length")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON)") from None
    metadata = header.pop("__metadata__", {}) or {}
    body, arrays, dtypes = data[8 + size:], {}, {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if end > len(body):
            raise ValueError(f"{path}: truncated: tensor {name!r} ends at byte {end:,} of the data, which has "
                             f"{len(body):,}")
        if entry["dtype"] not in _NUMPY:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which vkloss does not hold")
        arrays[name] = np.frombuffer(body[begin:end], _NUMPY[entry["dtype"]]).reshape(entry["shape"])
        dtypes[name] = entry["dtype"]
    return arrays, dtypes, metadata


def save(path, tensors: dict, optimizer=None, metadata: dict | None = None) -> None:
    """Write `tensors` (name -> Tensor), the optimizer's state and `metadata` (JSON-able) to `path`, atomically."""
    arrays = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"save: {name!r} is a {type(tensor).__name__}, not a vkloss Tensor")
        if name.startswith(OPTIMIZER + "."):
            raise ValueError(f"save: the name {name!r} is kept for the optimizer's state")
        arrays[name] = _raw(tensor)
    header = {"vkloss": json.dumps(metadata or {})}
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, entries in state["state"].items():
            for key, value in entries.items():
                arrays[f"{OPTIMIZER}.{index}.{key}"] = ("F32", np.ascontiguousarray(value, np.float32).reshape(
                    np.shape(value) or (1,)))
        header[OPTIMIZER] = json.dumps({"type": type(optimizer).__name__, "param_groups": state["param_groups"]})
    write(path, arrays, header)


def load(path, tensors: dict, optimizer=None) -> dict:
    """Copy the file's tensors into `tensors` (name -> Tensor of the same shape and dtype) and its optimizer state
    into `optimizer`; return the metadata. Everything is checked before anything is copied."""
    arrays, dtypes, header = read(path)
    for name, tensor in tensors.items():
        if name not in arrays:
            raise ValueError(f"{path}: has no tensor {name!r} (it has {', '.join(sorted(arrays)) or 'none'})")
        dtype = _DTYPES[dtype_name(tensor.dtype)]
        if arrays[name].shape != tensor.shape or dtypes[name] != dtype:
            raise ValueError(f"{path}: tensor {name!r} is {dtypes[name]} of shape {arrays[name].shape}; the one to "
                             f"load it into is {dtype} of shape {tensor.shape}")
    state = None
    if optimizer is not None:
        if OPTIMIZER not in header:
            raise ValueError(f"{path}: holds no optimizer state")
        saved = json.loads(header[OPTIMIZER])
        if saved["type"] != type(optimizer).__name__:
            raise ValueError(f"{path}: holds the state of a {saved['type']}, not of a {type(optimizer).__name__}")
        state = {"param_groups": saved["param_groups"], "state": {}}
        for name, array in arrays.items():
            if name.startswith(OPTIMIZER + "."):
                _, index, key = name.split(".", 2)
                state["state"].setdefault(int(index), {})[key] = float(array[0]) if key == "step" else array
        optimizer.check_state_dict(state)
    for name, tensor in tensors.items():
        array = arrays[name]
        if tensor.dtype == BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensor.copy_(array)
    if state is not None:
        optimizer.load_state_dict(state)
    return json.loads(header.get("vkloss", "{}"))
