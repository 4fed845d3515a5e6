"""Launch plans: an op called again the same way (same op, operand shapes, dtypes, options, gradient needs) does
not work its launch out again.

The first such call runs the op's forward through a `Tracer`, which passes every allocation, upload, copy and
dispatch on to the engine and writes them down, with each buffer named by its role: an operand, the output, or the
n-th buffer the forward made. What comes out is a `Plan`: the output's shape and layout, the buffers to make, and
each dispatch's kernel launch (variant, grid, workgroup, specialization), push constants and bindings by role. The
next calls only make the buffers and record the dispatches, with the Algorithms found by launch and blocks.

A forward is planned only if everything it did went through its context (a buffer it brought from elsewhere makes
its calls unplanned) and it is vkloss's own or a user's shader op (a user's `forward=` may do what a plan cannot
repeat, such as upload new random numbers).
"""
from __future__ import annotations

import numpy as np

from .launch import WORKGROUP
from .tensor import Tensor

UNPLANNED = "unplanned"  # what the plan table holds for a call shape whose forward cannot be planned


def plan_key(graph, op, arguments: dict, grad_enabled: bool) -> tuple | None:
    """What makes a call of `op` the same as an earlier one: the operands' shapes, dtypes and gradient needs, the
    options (each with its type: 0 is not False), and whether gradients are on. None where an operand is not a
    Tensor of this graph."""
    key = [op, grad_enabled]
    operands = op.operand_names
    for name, value in arguments.items():
        if type(value) is Tensor:
            if value.graph is not graph:
                return None
            key += (value.shape, value.dtype, value.requires_grad)
        elif name in operands and value is not None:
            return None
        else:
            key += (value, type(value))
    return tuple(key)


class PlanTable:
    """A Graph's launch plans by call key (see plan_key); past SIZE the oldest goes first. A training loop needs a
    few dozen."""

    SIZE = 4096

    def __init__(self):
        self._plans: dict = {}  # key -> its Plan, or UNPLANNED

    def get(self, key) -> Plan | None:
        """The plan for a call of this key, or None (no key, none yet, or the forward cannot be planned). A key
        that cannot be one (an option that is an array) raises TypeError."""
        plan = self._plans.get(key) if key is not None else None
        return None if plan is UNPLANNED else plan

    def put(self, key, plan: Plan | None) -> None:
        while len(self._plans) >= self.SIZE:
            del self._plans[next(iter(self._plans))]  # the oldest
        self._plans[key] = plan if plan is not None else UNPLANNED

    def clear(self) -> None:
        self._plans.clear()


class NotPlannable(Exception):
    pass


class Tracer:
    """Stands in for the engine in a forward's context: passes each call on and writes it down by roles."""

    def __init__(self, engine, buffers: list):
        self._engine = engine
        self.device, self.launch = engine.device, engine.launch
        self.roles = {id(buffer): position for position, buffer in enumerate(buffers)}
        self.held = list(buffers)  # keeps the traced buffers alive while the forward runs: ids stay unique
        self.made: list[tuple] = []  # ("alloc", size, dtype) or ("upload", array), in order
        self.steps: list[tuple] = []  # ("dispatch", launch, reads, writes, words, key bytes) or ("copy", src, dst)
        self.unplannable: str | None = None

    def _role(self, buffer) -> int:
        role = self.roles.get(id(buffer))
        if role is None:
            raise NotPlannable(f"a buffer of {buffer.size} elements the forward did not make")
        return role

    def _roles(self, buffers) -> tuple | None:
        try:
            return tuple(self._role(b) for b in buffers)
        except NotPlannable as e:
            self.unplannable = str(e)
            return None

    def _made(self, buffer, how: tuple):
        self.roles[id(buffer)] = len(self.held)
        self.held.append(buffer)
        self.made.append(how)
        return buffer

    def alloc(self, size: int, dtype=np.float32):
        buffer = self._engine.alloc(size, dtype)
        return self._made(buffer, ("alloc", buffer.size, buffer.dtype))  # as the engine takes them: int, np.dtype

    def upload(self, array: np.ndarray):
        return self._made(self._engine.upload(array), ("upload", np.array(array, copy=True)))

    def copy(self, source, target) -> None:
        self._engine.copy(source, target)
        roles = self._roles((source, target))
        self.steps.append(("copy", *roles) if roles else None)

    def dispatch(self, variant, inputs, outputs, push, grid, workgroup: int = WORKGROUP, constants=()):
        launch, words, key = self._engine.dispatch(variant, inputs, outputs, push, grid, workgroup, constants)
        reads, writes = self._roles(inputs), self._roles(outputs)
        self.steps.append(("dispatch", launch, reads, writes, words, key))
        return launch, words, key

    def plan(self, shapes, out_layouts, out_dtype, checks, saved, options: dict, differentiable: bool,
             constants: tuple) -> "Plan | None":
        """The plan of what was traced, or None where it cannot be repeated."""
        if self.unplannable:
            return None
        try:
            return Plan(shapes, out_layouts, out_dtype, tuple(self.made), tuple(self.steps),
                        tuple((self._role(count), message) for count, message in checks),
                        None if saved is None else tuple(None if b is None else self._role(b) for b in saved),
                        options, differentiable, constants)
        except NotPlannable:
            return None


class Plan:
    """One call shape of one op, worked out: run() makes its buffers and records its work."""

    __slots__ = ("shapes", "out_layouts", "out_dtype", "made", "steps", "checks", "saved", "options",
                 "differentiable", "constants")

    def __init__(self, shapes, out_layouts, out_dtype, made, steps, checks, saved, options, differentiable,
                 constants):
        self.shapes, self.out_layouts, self.out_dtype = shapes, out_layouts, out_dtype  # one per output
        self.made, self.steps, self.checks, self.saved = made, steps, checks, saved
        self.options = options  # every option but the tensor-valued ones, defaults filled in: the node's attributes
        self.differentiable = differentiable  # whether the output goes on the tape
        self.constants = constants  # the names of the tensor-valued options, bound after the operands

    def run(self, engine, operands: list) -> list:
        """The buffers by role (operands, outputs, then what the forward made), the work recorded."""
        return engine.run_plan(operands, self.out_layouts, self.made, self.steps)
