"""Op signatures, one string per op in the style of PyTorch's native_functions.yaml:

    cross_entropy_loss(Tensor pred, Tensor|Index target, *, Tensor? weight=None, str{mean|sum|none} reduction='mean',
                       int? ignore_index=None, float label_smoothing=0.0, bool inplace_grad=False) -> Tensor

Before `*` are the op's operands, recorded on the tape; after it, keyword options. Types:
- `Tensor`: a float32 Tensor of the Graph. `Float`: a float32 or 16-bit (float16, bfloat16) Tensor. `Index`: class
  indices, an int32 Tensor or an integer numpy array (uploaded as int32). `Tensor|Index`: either. `Tensor?` (or
  `Float?`) as an operand: may be None or a numpy array (uploaded as float32).
- `Tensor?` as an option: a constant tensor (a numpy array, uploaded, or a Tensor that needs no gradient).
- `float`, `int`, `bool`, `str`, `int[]` (a shape), `str{a|b|c}` (one of those words), `dtype{a|b}` (a tensor
  dtype in any spelling g.tensor takes, given to the op as its name), and `Any` (unchecked: what a user's op
  declares without a type). A `?` after a type also allows None.
- Defaults are Python literals (numbers, strings, True/False/None, tuples and lists), and `inf`, `-inf` and `nan`;
  each is checked against its type and set when the schema is read.

From the one string come: argument binding and checking, the same for every op (a missing or unknown argument, or
a value of the wrong type, is a TypeError naming `g.<op>`; a word outside its set a ValueError); the signature of
the op's method on `Graph` (`inspect.signature`); the first line of its docstring; `tools list`; and the
generated methods in `vkloss/_graph_ops.py`.
"""
from __future__ import annotations

import ast
import functools
import inspect
import re
from dataclasses import dataclass

import numpy as np

from .tensor import BFLOAT16

_SIGNATURE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*->\s*(Tensor|\(\s*Tensor(?:\s*,\s*Tensor)+\s*\))\s*$", re.S)
_PARAM = re.compile(r"^([A-Za-z|]+(?:\{[\w|]+\})?(?:\[\])?\??)\s+([A-Za-z_]\w*)(?:\s*=\s*(.+))?$")
_SCALARS = ("float", "int", "bool", "str", "int[]", "dtype", "Any")
TENSOR_TYPES = ("Tensor", "Index", "Tensor|Index", "Float")


class _Omitted:
    """The default of a user op's option whose default is not known: left out of the call when not given."""

    def __repr__(self) -> str:
        return "..."


OMITTED = _Omitted()


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # without the trailing ? and the {choices}
    optional: bool  # None allowed
    default: object  # inspect.Parameter.empty: required
    keyword_only: bool
    choices: tuple = ()

    @property
    def is_tensor(self) -> bool:
        return self.type in TENSOR_TYPES

    @property
    def is_operand(self) -> bool:
        """A tensor before `*`: recorded on the tape as an input of the op."""
        return self.is_tensor and not self.keyword_only

    @property
    def is_constant_tensor(self) -> bool:
        """A tensor-valued option after `*`: a loss's class weights."""
        return self.is_tensor and self.keyword_only

    def text(self) -> str:
        kind = self.type + (f"{{{'|'.join(self.choices)}}}" if self.choices else "") + ("?" if self.optional else "")
        default = "" if self.default is inspect.Parameter.empty else f"={self.default!r}"
        return f"{kind} {self.name}{default}"


_SIGNATURES: dict = {}


@dataclass(frozen=True)
class Schema:
    name: str
    params: tuple[Param, ...]
    outputs: int = 1  # `-> Tensor`, or `-> (Tensor, Tensor)`: the first is the one that differentiates

    @functools.cached_property
    def operands(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.is_operand)

    @functools.cached_property
    def options(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.keyword_only)

    @functools.cached_property
    def constant_tensors(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.is_constant_tensor)

    def text(self) -> str:
        parts = [p.text() for p in self.params if not p.keyword_only]
        if self.options:
            parts += ["*"] + [p.text() for p in self.options]
        returns = "Tensor" if self.outputs == 1 else "(" + ", ".join(["Tensor"] * self.outputs) + ")"
        return f"{self.name}({', '.join(parts)}) -> {returns}"

    def signature(self, with_self: bool = False) -> inspect.Signature:
        key = (self, with_self)
        if key not in _SIGNATURES:
            _SIGNATURES[key] = self._signature(with_self)
        return _SIGNATURES[key]

    def _signature(self, with_self: bool) -> inspect.Signature:
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] if with_self else []
        for p in self.params:
            kind = inspect.Parameter.KEYWORD_ONLY if p.keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
            params.append(inspect.Parameter(p.name, kind, default=p.default))
        return inspect.Signature(params)

    def bound(self, args: tuple, kwargs: dict) -> dict:
        """The call's arguments by parameter name, as Python binds them to the signature (unchecked: see checked).
        Operands are returned as given: the Graph converts them."""
        try:
            return dict(self.signature().bind(*args, **kwargs).arguments)
        except TypeError as e:  # Python's own words, as the generated methods raise them
            raise TypeError(f"Graph.{self.name}() {e}") from None

    def checked(self, bound: dict) -> dict:
        """Arguments already bound by name (a generated method's, which Python bound): defaults filled in, options
        type-checked."""
        where = f"g.{self.name}"
        for p in self.params:
            if p.name not in bound:
                if p.default is not OMITTED:
                    bound[p.name] = p.default
            elif not p.is_tensor:
                bound[p.name] = _checked(where, p, bound[p.name])
        return {p.name: bound[p.name] for p in self.params if p.name in bound}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _dtype_name(v) -> str:
    """A dtype's name in any of its spellings (np.float16, 'half', 'bfloat16', ...); its set says which it takes."""
    if isinstance(v, str) and v.lower() in (BFLOAT16, "bf16"):
        return BFLOAT16
    return np.dtype(v).name


def _is_dtype(v) -> bool:
    try:
        _dtype_name(v)
    except TypeError:
        return False
    return True


_ACCEPTS = {"float": lambda v: _is_int(v) or isinstance(v, (float, np.floating)), "int": _is_int,
            "bool": lambda v: isinstance(v, (bool, np.bool_)), "str": lambda v: isinstance(v, str),
            "int[]": lambda v: isinstance(v, (tuple, list, np.ndarray)) and all(map(_is_int, v)), "dtype": _is_dtype}
_CONVERT = {"float": float, "int": int, "bool": bool, "str": str, "int[]": lambda v: tuple(int(d) for d in v),
            "dtype": _dtype_name}
_EXPECTED = {"int[]": "a sequence of ints", "int": "an int", "dtype": "a dtype (a numpy dtype, type or name)"}


def _checked(where: str, p: Param, value):
    """An option's value, checked against its declared type (numpy scalars taken as Python ones)."""
    if value is None and (p.optional or p.default is None):
        return None
    kind = p.type
    if kind == "Any":
        return value
    if not _ACCEPTS[kind](value):
        expected = _EXPECTED.get(kind, f"a {kind}") + (" or None" if p.optional else "")
        raise TypeError(f"{where}: {p.name} must be {expected}, got {type(value).__name__} {value!r}")
    converted = _CONVERT[kind](value)
    if p.choices and converted not in p.choices:
        raise ValueError(f"{where.removeprefix('g.')}: {p.name} must be one of {', '.join(map(repr, p.choices))}, "
                         f"got {value!r}")
    return converted


_NAMED = {"inf": float("inf"), "nan": float("nan")}


def _literal(text: str):
    """A default's value: a Python literal, or inf, -inf, nan (also inside tuples and lists)."""
    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in _NAMED:
            return _NAMED[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            if isinstance(inner, (int, float)) and not isinstance(inner, bool):
                return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [value(item) for item in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        raise ValueError(ast.unparse(node))

    return value(ast.parse(text.strip(), mode="eval").body)


def _split_parameters(body: str) -> list[str]:
    """The parameters of a signature's body, split at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for position, char in enumerate(body):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(body[start:position])
            start = position + 1
    return [part.strip() for part in parts + [body[start:]] if part.strip()]


def parse(text: str) -> Schema:
    """A schema string -> Schema; a malformed one raises ValueError saying which part."""
    match = _SIGNATURE.match(text)
    if not match:
        raise ValueError(f"schema {text!r}: expected 'name(Type arg, ..., *, Type option=default, ...) -> Tensor' "
                         "(or -> (Tensor, Tensor))")
    name, body, returns = match.groups()
    params, keyword_only = [], False
    for part in _split_parameters(body):
        if part == "*":
            keyword_only = True
            continue
        found = _PARAM.match(part)
        if not found:
            raise ValueError(f"schema of {name}: cannot read parameter {part!r} (expected 'Type name[=default]')")
        kind, pname, default_text = found.groups()
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        choices = ()
        if "{" in kind:
            kind, words = kind[:-1].split("{")
            choices = tuple(words.split("|"))
        if kind not in TENSOR_TYPES + _SCALARS:
            raise ValueError(f"schema of {name}: unknown type {kind!r} of {pname} (one of "
                             f"{', '.join(TENSOR_TYPES + _SCALARS)})")
        if kind in TENSOR_TYPES and keyword_only and kind != "Tensor":
            raise ValueError(f"schema of {name}: option {pname} must be a Tensor? (class indices are operands)")
        default = inspect.Parameter.empty if default_text is None else (
            OMITTED if default_text == "..." else _default(name, pname, default_text))
        param = Param(pname, kind, optional, default, keyword_only, choices)
        if default not in (inspect.Parameter.empty, OMITTED) and not param.is_tensor:
            try:
                default = _checked("", param, default)
            except (TypeError, ValueError) as e:  # "<parameter> must be ..., got ..."
                raise ValueError(f"schema of {name}: the default of {str(e).lstrip(': ')}") from None
            param = Param(pname, kind, optional, default, keyword_only, choices)
        params.append(param)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"schema of {name}: a parameter name repeats in {names}")
    return Schema(name, tuple(params), returns.count("Tensor"))


def _default(name: str, parameter: str, text: str):
    try:
        return _literal(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"schema of {name}: the default of {parameter}, {text.strip()!r}, is not a Python literal "
                         "(numbers, 'strings', True, False, None, tuples and lists of them, inf, -inf, nan)") from None
