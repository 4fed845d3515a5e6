"""Op signatures, one string per op in the style of PyTorch's native_functions.yaml:

    cross_entropy_loss(Tensor pred, Tensor|Index target, *, Tensor? weight=None, str{mean|sum|none} reduction='mean',
                       int? ignore_index=None, float label_smoothing=0.0, bool inplace_grad=False) -> Tensor

Before `*` are the op's operands, recorded on the tape; after it, keyword options. Types:
- `Tensor`: a float32 Tensor of the Graph. `Float`: a float32 or 16-bit (float16, bfloat16) Tensor. `Index`: class
  indices, an int32 Tensor or an integer numpy array (uploaded as int32). `Tensor|Index`: either. `Tensor?` (or
  `Float?`) as an operand: may be None or a numpy array (uploaded as float32).
- `Tensor?` as an option: a constant tensor (a numpy array, uploaded, or a Tensor that needs no gradient).
- `float`, `int`, `bool`, `str`, `int[]` (a shape), `str{a|b|c}` (one of those words), and `Any` (unchecked: what
  a user's op declares without a type). A `?` after a type also allows None.

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

_SIGNATURE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*->\s*(Tensor|\(\s*Tensor(?:\s*,\s*Tensor)+\s*\))\s*$", re.S)
_PARAM = re.compile(r"^([A-Za-z|]+(?:\{[\w|]+\})?(?:\[\])?\??)\s+([A-Za-z_]\w*)(?:\s*=\s*(.+))?$")
_SCALARS = ("float", "int", "bool", "str", "int[]", "Any")
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

    def bind(self, args: tuple, kwargs: dict) -> dict:
        """The call's arguments by parameter name (options left at their default are filled in, OMITTED ones left
        out), each checked against its type. Operands are returned as given: the Graph converts them."""
        try:
            bound = self.signature().bind(*args, **kwargs).arguments
        except TypeError as e:  # Python's own words, as the generated methods raise them
            raise TypeError(f"Graph.{self.name}() {e}") from None
        return self.checked(bound)

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


_ACCEPTS = {"float": lambda v: _is_int(v) or isinstance(v, (float, np.floating)), "int": _is_int,
            "bool": lambda v: isinstance(v, (bool, np.bool_)), "str": lambda v: isinstance(v, str),
            "int[]": lambda v: isinstance(v, (tuple, list, np.ndarray)) and all(map(_is_int, v))}
_CONVERT = {"float": float, "int": int, "bool": bool, "str": str, "int[]": lambda v: tuple(int(d) for d in v)}


def _checked(where: str, p: Param, value):
    """An option's value, checked against its declared type (numpy scalars taken as Python ones)."""
    if value is None and (p.optional or p.default is None):
        return None
    kind = p.type
    if kind == "Any":
        return value
    if not _ACCEPTS[kind](value):
        expected = {"int[]": "a sequence of ints", "int": "an int"}.get(kind, f"a {kind}") + (
            " or None" if p.optional else "")
        raise TypeError(f"{where}: {p.name} must be {expected}, got {type(value).__name__} {value!r}")
    if p.choices and value not in p.choices:
        raise ValueError(f"{where.removeprefix('g.')}: {p.name} must be one of {', '.join(map(repr, p.choices))}, "
                         f"got {value!r}")
    return _CONVERT[kind](value)


def parse(text: str) -> Schema:
    """A schema string -> Schema; a malformed one raises ValueError saying which part."""
    match = _SIGNATURE.match(text)
    if not match:
        raise ValueError(f"schema {text!r}: expected 'name(Type arg, ..., *, Type option=default, ...) -> Tensor' "
                         "(or -> (Tensor, Tensor))")
    name, body, returns = match.groups()
    params, keyword_only = [], False
    for part in filter(None, (piece.strip() for piece in body.split(","))):
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
            OMITTED if default_text == "..." else ast.literal_eval(default_text))
        params.append(Param(pname, kind, optional, default, keyword_only, choices))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"schema of {name}: a parameter name repeats in {names}")
    return Schema(name, tuple(params), returns.count("Tensor"))


def derived(name: str, operands: int, *functions, options: dict | None = None) -> Schema:
    """A schema for a user's op declared without one (register_op(..., inputs=N)): operand names and option
    defaults read from its shape rule or compose function (the first that names them), option types Any."""
    operand_names, defaults = [], {}
    for function in functions:
        if function is None:
            continue
        try:
            params = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            continue
        if params and params[0].name == "g":  # a compose function: (g, *tensors, **options)
            params = params[1:]
        plain = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not operand_names and len(plain) >= operands:
            operand_names = [p.name for p in plain[:operands]]
        for p in params:
            if p.default is not p.empty and p.name not in operand_names:
                defaults.setdefault(p.name, p.default)
    operand_names = operand_names or [f"x{i}" for i in range(operands)]
    option_names = list(options) if options is not None else list(defaults)
    params = [Param(n, "Tensor", False, inspect.Parameter.empty, False) for n in operand_names]
    params += [Param(n, "Any", True, defaults.get(n, OMITTED), True) for n in option_names if n not in operand_names]
    return Schema(name, tuple(params))
