"""The kernel catalog: every shader family's variants, binding table and push-constant block, declared once, here.

A `Kernel` names its `.comp` file and declares, in Python:
- its switches: each a define with the values it may take (`mode=("ROW", "GRAD")`, `weighted=(False, True)`), and
  `allowed(**switches)`, which says which combinations exist;
- its push-constant block: `"uint rows, uint classes, float scale = 1.0"`;
- its binding table: `bindings(**switches) -> (reads, writes)`, buffer names in binding order.

A variant's defines carry all of it into the GLSL, so nothing is positional in two languages:
- each switch: a string value as `MODE_ROW=1`, a bool as `WEIGHTED=0|1`, an int as `ITEMS=16`;
- each binding: `B_<NAME>=<slot>` (absent when the variant has no such buffer: `#ifdef B_WEIGHT`);
- the push block: `PUSH_CONSTANTS=uint rows; uint classes; float scale;`, which the shader declares as
  `layout(push_constant) uniform Push { PUSH_CONSTANTS } p;`.

`Kernel.variant(**switches)` refuses a combination outside the declared table, so the variants `tools compile` builds
(`Kernel.variants()`, for every kernel in `catalog()`) and the variants the ops pick at run time cannot drift apart.
`dispatch(engine, variant, grid, push=..., **buffers)` binds buffers by name and packs the push constants by their
declared types. Nothing here knows about ops.
"""
from __future__ import annotations

import itertools
import re
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import shaders
from .launch import WORKGROUP

_CATALOG: list["Kernel"] = []
_PUSH_FIELD = re.compile(r"^(uint|int|float)\s+([A-Za-z_]\w*)(?:\s*=\s*(\S+))?$")


@dataclass(frozen=True)
class PushField:
    type: str  # uint, int or float
    name: str
    default: float | int | None  # None: every dispatch must give it


def parse_push(block: str) -> tuple[PushField, ...]:
    """`"uint n, float scale = 1.0"` -> its fields, in order (each 4 bytes, as GLSL lays a block of scalars)."""
    fields = []
    for text in filter(None, (part.strip() for part in block.split(","))):
        match = _PUSH_FIELD.match(text)
        if not match:
            raise ValueError(f"push-constant field {text!r}: expected '<uint|int|float> name [= default]'")
        kind, name, default = match.groups()
        fields.append(PushField(kind, name, None if default is None else (float if kind == "float" else int)(default)))
    return tuple(fields)


@dataclass(frozen=True)
class KernelVariant:
    """One variant: its compiled shader form, and the names of what it binds."""

    kernel: "Kernel"
    switches: tuple[tuple[str, object], ...]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    shader: shaders.Variant

    @property
    def name(self) -> str:
        return self.shader.name


ACCESS_SWITCHES = {"vec4": (False, True), "wide": (False, True)}  # shaders/include/access.glsl's VEC4 and WIDE


def access_switches(width: int) -> dict:
    """The VEC4 and WIDE switches (shaders/include/access.glsl) for `width` float32 values an access: 1, 4 or 8."""
    if width not in (1, 4, 8):
        raise ValueError(f"an access moves 1, 4 or 8 float32 values, not {width}")
    return {"vec4": width >= 4, "wide": width == 8}


def access_allowed(vec4: bool, wide: bool) -> bool:
    """Whether access.glsl takes this pair: eight floats an access are two vec4s, so WIDE needs VEC4."""
    return vec4 or not wide


class Kernel:
    def __init__(self, source: str, *, push: str, bindings: Callable[..., tuple], switches: dict | None = None,
                 allowed: Callable[..., bool] | None = None, defines: dict | None = None):
        """source: a `.comp` file in shaders/ (or a path). push: the push-constant block. bindings(**switches) ->
        (reads, writes), buffer names in binding order; a buffer both read and written is listed under writes.
        switches: define -> the values it may take (the first is the default). allowed(**switches): whether a
        combination exists (default: all). defines: fixed defines every variant gets (a block size), or
        defines(**switches) -> a variant's own (the function an op's variant applies)."""
        self.source = source
        self.push = parse_push(push)
        self._push_names = {f.name for f in self.push}
        self._push_format = "=" + "".join({"uint": "I", "int": "i", "float": "f"}[f.type] for f in self.push)
        self.switches = {name: tuple(values) for name, values in (switches or {}).items()}
        self._bindings, self._allowed = bindings, allowed or (lambda **_: True)
        self._defines = defines if callable(defines) else (lambda fixed=dict(defines or {}), **_: fixed)
        self._variants: dict[tuple, KernelVariant] = {}
        _CATALOG.append(self)

    def __repr__(self) -> str:
        return f"Kernel({self.source!r})"

    def variant(self, **switches) -> KernelVariant:
        """The variant with these switches (the others at their first value). A switch or a combination the table
        does not declare raises ValueError: add it to the table, so that `tools compile` builds it too."""
        key = tuple(switches.items())
        found = self._variants.get(key)
        if found is None:
            found = self._variants[key] = self._make(switches)
        return found

    def _make(self, given: dict) -> KernelVariant:
        unknown = sorted(set(given) - set(self.switches))
        if unknown:
            raise ValueError(f"{self.source}: no switch {', '.join(unknown)}; it declares {', '.join(self.switches)}")
        full = {name: values[0] for name, values in self.switches.items()}
        for name, value in given.items():
            if value not in self.switches[name]:
                raise ValueError(f"{self.source}: switch {name}={value!r} is not one of {self.switches[name]}")
            full[name] = value
        if not self._allowed(**full):
            raise ValueError(f"{self.source}: the combination {full} is not in its variant table (allowed())")
        reads, writes = (tuple(names) for names in self._bindings(**full))
        names = reads + writes
        if len(set(names)) != len(names):
            raise ValueError(f"{self.source}: binding table {names} names a buffer twice")
        defines = dict(self._defines(**full))
        for name, value in full.items():
            if isinstance(value, str):
                defines[f"{name.upper()}_{value.upper()}"] = 1
            else:
                defines[name.upper()] = int(value)
        defines.update({f"B_{name.upper()}": slot for slot, name in enumerate(names)})
        defines["PUSH_CONSTANTS"] = " ".join(f"{f.type} {f.name};" for f in self.push)
        return KernelVariant(self, tuple(sorted(full.items())), reads, writes, shaders.variant(self.source, **defines))

    def variants(self) -> list[KernelVariant]:
        """Every variant the table declares."""
        names = list(self.switches)
        combos = [dict(zip(names, values)) for values in itertools.product(*self.switches.values())]
        return [self.variant(**combo) for combo in combos if self._allowed(**combo)]

    def push_words(self, values: dict) -> np.ndarray:
        """The push constants as one uint32 array (kp takes a numpy array of one 4-byte dtype; a list turns every
        value into a float): each field packed as its declared type (uint, int, float)."""
        if not values.keys() <= self._push_names:
            raise ValueError(f"{self.source}: no push constant {', '.join(sorted(values.keys() - self._push_names))}")
        ordered = [values.get(f.name, f.default) for f in self.push]
        if None in ordered:
            raise ValueError(f"{self.source}: push constant {self.push[ordered.index(None)].name} not given")
        try:
            return np.frombuffer(struct.pack(self._push_format, *ordered), np.uint32)
        except struct.error as e:
            raise ValueError(f"{self.source}: push constants {dict(zip(self._push_names, ordered))}: {e}") from None


def catalog() -> list[Kernel]:
    """Every kernel declared so far (importing vkloss.ops, vkloss.optim and the bench declares the built-in ones)."""
    return list(_CATALOG)


def dispatch(engine, variant: KernelVariant, grid, *, workgroup: int = WORKGROUP, push: dict | None = None,
             constants: tuple = (), **buffers) -> None:
    """Record `variant` on `engine`: buffers by the names of its binding table (a None is as if not given), push
    constants by the names of its block, specialization constants after the workgroup size in `constants`."""
    given = {name: buffer for name, buffer in buffers.items() if buffer is not None}
    expected = variant.reads + variant.writes
    if set(given) != set(expected):
        missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
        raise ValueError(f"{variant.name}: binds {', '.join(expected)}; missing {missing or 'none'}, "
                         f"not bound {extra or 'none'}")
    engine.dispatch(variant.shader, [given[n] for n in variant.reads], [given[n] for n in variant.writes],
                    variant.kernel.push_words(push or {}), grid, workgroup=workgroup, constants=constants)
