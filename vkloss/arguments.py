"""What the Graph takes from a caller, converted and checked: host data for a tensor, an op's operands and its
tensor-valued options. Each refusal names the call, the argument and its shape."""
from __future__ import annotations

import numpy as np

from . import registry
from .tensor import SIXTEEN_BIT, Tensor, encode16

_FLOAT_LIKE = "fiu"  # float, signed and unsigned integer dtypes convert to float32
_INT32 = np.iinfo(np.int32)


def host_array(data, where: str) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype.kind not in _FLOAT_LIKE:
        raise TypeError(f"{where} takes real numbers; got an array of dtype {array.dtype} with shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{where} got an empty array of shape {array.shape}")
    return array


def converted(array: np.ndarray, dtype, where: str) -> np.ndarray:
    """`array` as `dtype`: any real numbers as float32, or as 16-bit floats packed two to a uint32 word; integers
    within int32's range as int32."""
    if dtype == np.float32:
        return array.astype(np.float32, copy=False)
    if dtype in SIXTEEN_BIT:
        return encode16(array, dtype)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{where}: an int32 tensor takes integer data; got dtype {array.dtype} with shape "
                        f"{array.shape}")
    low, high = array.min(), array.max()
    if low < _INT32.min or high > _INT32.max:
        raise ValueError(f"{where}: values from {low} to {high} (shape {array.shape}) do not fit int32")
    return array.astype(np.int32, copy=False)


def operand(g, op, position: int, param, value) -> Tensor | None:
    """Operand `position` (1-based) of g.<op>: a Tensor of this graph, float32 unless the schema takes class
    indices there (where an integer numpy array is also taken, and uploaded as int32)."""
    where = f"g.{op.name}: argument {position}"
    if value is None and param.optional:
        return None
    integer = param.type in ("Index", "Tensor|Index")
    if not isinstance(value, Tensor):
        array = np.asarray(value)
        if integer and array.dtype.kind in "iu":
            return g.tensor(array, dtype=np.int32)
        if param.type == "Index" and array.dtype.kind == "f":
            raise TypeError(f"{where} ({param.name}) takes class indices, an int32 Tensor or an integer numpy "
                            f"array; got a {array.dtype} array of shape {array.shape}")
        if param.optional and array.dtype.kind in _FLOAT_LIKE and array.size:
            return g.tensor(array)
        raise TypeError(f"{where} ({param.name}) is a {type(value).__name__}, not a vkloss Tensor (wrap arrays "
                        "with g.tensor)")
    if value.graph is not g:
        raise ValueError(f"{where} ({param.name}) belongs to another Graph")
    if value.dtype in SIXTEEN_BIT and param.type != "Float":
        takers = ", ".join(f"{o.name}({', '.join(p.name for p in o.schema.operands if p.type == 'Float')})"
                           for o in registry.all_ops() if any(p.type == "Float" for p in o.schema.operands))
        raise TypeError(f"{where} is a {value.dtype} tensor of shape {value.shape}; this op takes float32 "
                        f"tensors there ({param.name}). 16-bit tensors go to {takers}")
    if value.dtype != np.float32 and value.dtype not in SIXTEEN_BIT and not integer:
        raise TypeError(f"{where} is an {value.dtype} tensor of shape {value.shape}; this op takes float32 "
                        f"tensors there ({param.name})")
    if param.type == "Index" and value.dtype != np.int32:
        raise TypeError(f"{where} ({param.name}) takes class indices: an int32 Tensor or an integer numpy "
                        f"array, not a {value.dtype} tensor of shape {value.shape}")
    return value


def constant_tensor(g, op, name: str, value) -> Tensor:
    """A tensor-valued option such as a loss's `weight`: a numpy array (uploaded) or a float32 Tensor that
    needs no gradient."""
    if not isinstance(value, Tensor):
        array = np.asarray(value)
        if array.dtype.kind not in _FLOAT_LIKE or array.size == 0:
            raise TypeError(f"g.{op.name}: {name} must be a non-empty array of real numbers or a Tensor, got "
                            f"{type(value).__name__} of dtype {array.dtype} and shape {array.shape}")
        return g.tensor(array)
    if value.graph is not g:
        raise ValueError(f"g.{op.name}: {name} belongs to another Graph")
    if value.dtype != np.float32 or value.requires_grad:
        raise ValueError(f"g.{op.name}: {name} must be a float32 tensor that requires no gradient; got "
                         f"{value!r}")
    return value
