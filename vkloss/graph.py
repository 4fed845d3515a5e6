"""Graph: the user's `g`. Holds the device, makes tensors, applies registered ops, runs backward.

Its op methods (`g.add`, `g.mse_loss`, ...) come from the registry, so an op declared there is on every Graph.
It knows nothing of kp: the engine does the device work.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from . import arguments, autodiff, op_methods, registry
from .device import DeviceInfo, choose_device
from . import _graph_ops
from .capture import CapturedStep
from .errors import CaptureError
from .host_copy import DeviceChecks, HostCopy
from .plans import PlanTable, Tracer, plan_key
from .runtime import Engine
from .tensor import SIXTEEN_BIT, Tensor, buffer_layout, decode16, parse_dtype

_FLOAT32 = np.dtype(np.float32)


class Graph(_graph_ops.Graph):
    """A device and the tensors and ops on it.

    `Graph(device=None)`: `device` is an index into `vkloss.devices()`; None reads `VKLOSS_DEVICE`, else prefers
    a discrete GPU, then an integrated one, then a CPU implementation such as lavapipe. `g.device` says which.
    NaN and infinity flow through ops as in PyTorch; `check_finite=True` counts them on the device after every op
    and raises FloatingPointError, naming the first op that produced one, at the next host read. `fuse=False` runs
    composed ops that would fuse (mse_loss, l1_loss: vkloss/fusion.py) op by op instead, as the tape records them.
    """

    check_finite, fuse = False, True  # each Graph's settings (below), declared so that no op takes their names

    def __init__(self, device: int | str | None = None, check_finite: bool = False, fuse: bool = True):
        self.device: DeviceInfo = choose_device(device)
        self.fuse = bool(fuse)
        self._engine = Engine(self.device)
        self._grad_enabled = True
        self._checks = DeviceChecks()  # device-side checks, read back with the next host copy
        self.check_finite = bool(check_finite)
        self._thread = threading.get_ident()
        self._modified: dict = {}  # while a backward rule runs: inputs of its op modified in place since
        self._backward_op = None
        self._seed = None  # the buffer of backward's d(loss)/d(loss) = 1, uploaded once
        self._plans = PlanTable()
        self._ops = op_methods.Ops(self)

    @property
    def ops(self) -> op_methods.Ops:
        """Every op by name, as torch.ops: g.ops.<name>, the internal kernels that backward rules call (such as
        g.ops.relu_backward) included."""
        return self._ops

    def require_usable(self, what: str) -> None:
        """Raise RuntimeError unless this Graph may be used here: it is used from the thread that made it, until
        closed. Its tape, checks and engine state are not shared across threads (make one Graph per thread; they
        are independent). Optimizers ask it before a step."""
        if self._engine.closed:
            raise RuntimeError(f"{what}: this Graph is closed")
        if threading.get_ident() != self._thread:
            raise RuntimeError(f"{what}: this Graph belongs to the thread that made it; make one Graph per thread")

    # ---- tensors -------------------------------------------------------------------------------------------
    def tensor(self, data, requires_grad: bool = False, dtype=None) -> Tensor:
        """A device tensor holding `data` as float32 (float64, float16 and integer arrays are converted), or with
        `dtype=np.int32` as int32: class indices for cross_entropy_loss (integer data within int32's range), or
        with `dtype=np.float16` or `dtype="bfloat16"` as 16-bit floats (bfloat16 rounded to nearest even from
        float32), which cross_entropy_loss, bce_with_logits_loss and linear_cross_entropy read (their maths in
        float32, their gradient in the input's dtype); other ops refuse them.

        A 0-d value becomes shape (1,). Bool, complex, object and string arrays raise TypeError; empty arrays
        raise ValueError."""
        self.require_usable("g.tensor")
        if isinstance(data, Tensor):  # a copy on the device, as torch.tensor(t) copies
            source = self._device_source(data, "g.tensor", data.shape, data.dtype if dtype is None else
                                         parse_dtype(dtype, "g.tensor"))
            if source.dtype == np.int32 and requires_grad:
                raise ValueError(f"g.tensor: an int32 tensor (shape {source.shape}) cannot require a gradient")
            buffer = self._engine.alloc(source.buffer.size, source.buffer.dtype)
            self._engine.copy(source.buffer, buffer)
            return Tensor(self, source.shape, buffer, requires_grad=bool(requires_grad), dtype=source.dtype)
        dtype = np.dtype(np.float32) if dtype is None else parse_dtype(dtype, "g.tensor")
        array = arguments.host_array(data, "g.tensor")
        shape = array.shape or (1,)
        # before converting: a too-large array is refused without a copy
        self._engine.check_size(*buffer_layout(array.size, dtype))
        if dtype == np.int32 and requires_grad:
            raise ValueError(f"g.tensor: an int32 tensor (shape {shape}) cannot require a gradient")
        buffer = self._engine.upload(arguments.converted(array, dtype, "g.tensor"))
        return Tensor(self, shape, buffer, requires_grad=bool(requires_grad), dtype=dtype)

    def _copy_into(self, tensor: Tensor, data) -> Tensor:
        self.require_usable("copy_")
        if not tensor.is_leaf:
            raise ValueError("copy_: only a leaf tensor (made by g.tensor or g.parameter) can be overwritten")
        if isinstance(data, Tensor):  # on the device, converted to this tensor's dtype, as PyTorch's copy_
            self._engine.copy(self._device_source(data, "copy_", tensor.shape, tensor.dtype).buffer, tensor.buffer)
        else:
            array = arguments.host_array(data, "copy_")
            if (array.shape or (1,)) != tensor.shape:
                raise ValueError(f"copy_: data of shape {array.shape} into a tensor of shape {tensor.shape}")
            self._engine.upload_into(tensor.buffer, arguments.converted(array, tensor.dtype, "copy_"))
        tensor.version += 1
        return tensor

    def _device_source(self, source: Tensor, where: str, shape: tuple, dtype) -> Tensor:
        """`source` as the data of a device copy of `shape` and `dtype`: itself, or its float conversion."""
        if source.graph is not self:
            raise ValueError(f"{where}: the tensor (shape {source.shape}) belongs to another Graph; copy through the "
                             "host with .numpy()")
        if source.shape != shape:
            raise ValueError(f"{where}: a tensor of shape {source.shape} into one of shape {shape}")
        if source.dtype == dtype:
            return source
        if np.int32 in (source.dtype, dtype):
            raise TypeError(f"{where}: a {source.dtype} tensor (shape {source.shape}) cannot become {dtype} on the "
                            "device; convert on the host: .numpy()")
        with self.no_grad():
            return self.astype(source, dtype=dtype)

    def parameter(self, data) -> Tensor:
        """A trainable tensor: `g.tensor(data, requires_grad=True)`. It lives on the device across steps; an
        optimizer updates it in place."""
        return self.tensor(data, requires_grad=True)

    def host_copy(self, tensor: Tensor, scalar: bool = False) -> HostCopy:
        """A host copy of `tensor` as it is now, made by the next submission, carrying the device-side checks
        recorded so far (what `Tensor.numpy_async()` and `item_async()` return)."""
        self.require_usable("reading a tensor")
        counts, entries = self._checks.take()
        pending = self._engine.read_async([tensor.buffer] + counts)
        decode = (lambda words, n=tensor.size, dtype=tensor.dtype: decode16(words, n, dtype)) \
            if tensor.dtype in SIXTEEN_BIT else None
        return HostCopy(self._checks, pending, self._checks.carried_by(pending, entries), tensor.shape, scalar,
                        decode)

    # ---- ops -----------------------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        """An op a plugin package declares (entry points load on first use); every other op is a method already."""
        if name.startswith("_"):
            raise AttributeError(name)
        if registry.get(name).internal:  # loads the plugins, or raises AttributeError
            raise AttributeError(f"Graph has no method {name}: it is an internal op, a kernel that backward rules "
                                 f"call, and not differentiable itself: g.ops.{name}")
        return getattr(type(self), name).__get__(self)

    def _call_op(self, name: str, args: tuple, kwargs: dict) -> Tensor:
        """A user's op, g.<op>(...): its arguments bound by the op's schema, then as a generated method's."""
        return self._call_bound(name, registry.get(name).schema.bound(args, kwargs))

    def _call_bound(self, name: str, arguments: dict) -> Tensor:
        """The one way from g.<op> to its dispatches: the arguments, bound to the signature, by name (a generated
        method's, which Python bound). The arguments are checked by the schema, then the op composed or its forward
        run and recorded on the tape. A call made the same way before runs its launch plan (vkloss/plans.py): no
        schema walk, shape rule or launch policy."""
        op = registry.get(name)
        key = plan_key(self, op, arguments, self._grad_enabled) if op.plannable else None
        try:
            plan = self._plans.get(key)
        except TypeError:  # an option that cannot be a key (an array): no plan
            plan = key = None
        if plan is not None and not self._modified and not self._engine.closed \
                and threading.get_ident() == self._thread:
            return self._run_plan(op, plan, arguments)
        return self._run_op(op, op.schema.checked(arguments), key)

    def _run_plan(self, op, plan, arguments: dict) -> Tensor:
        tensors = [arguments[name] for name in op.operand_names]
        given = [t.buffer for t in tensors] if not op.optional_operands else [_buffer_of(t) for t in tensors]
        options = plan.options
        if plan.constants:
            constants = [arguments[name] for name in plan.constants]
            given += [c.buffer for c in constants]
            options = {**options, **dict(zip(plan.constants, constants))}
        buffers = plan.run(self._engine, given)
        return self._record(op, tensors, options, plan.shapes, buffers[len(given):len(given) + len(plan.shapes)],
                            plan.out_dtype, plan.differentiable,
                            [(buffers[role], message) for role, message in plan.checks] if plan.checks else (),
                            None if plan.saved is None else [None if r is None else buffers[r] for r in plan.saved])

    def _run_op(self, op, bound: dict, key=None) -> Tensor:
        self.require_usable(f"g.{op.name}")
        operands = [self._operand(op, position, p, bound.pop(p.name)) for position, p in
                    enumerate(op.schema.operands, 1)]
        for p in op.schema.constant_tensors:
            if bound.get(p.name) is not None:
                bound[p.name] = arguments.constant_tensor(self, op, p.name, bound[p.name])
        if op.compose is not None:
            fused = op.fused_for(operands, bound) if self.fuse else None  # one generated kernel (vkloss/fusion.py)
            return self._apply(fused, operands, bound) if fused else op.compose(self, *operands, **bound)
        return self._apply(op, operands, bound, key)

    def _operand(self, op, position: int, param, value) -> Tensor | None:
        """Operand `position` (1-based) of g.<op>, converted and checked (vkloss/arguments.py); refused while a
        backward rule runs if it was modified in place since its op ran."""
        if isinstance(value, Tensor) and value.graph is self and id(value) in self._modified:
            tensor, version = self._modified[id(value)]
            raise RuntimeError(
                f"backward of {self._backward_op}: a tensor it needs (shape {tensor.shape}) was modified in place "
                f"since the op ran (by copy_ or an optimizer step: version {tensor.version}, expected {version}), as "
                "PyTorch's 'modified by an inplace operation'. Refill inputs and step optimizers after backward")
        return arguments.operand(self, op, position, param, value)

    def _apply(self, op, tensors: list, options: dict, key=None) -> Tensor:
        """Run a kernel op's forward on checked operands and record it on the tape; with a plan `key`, write its
        launch plan down too."""
        constants = {name: value for name, value in options.items() if isinstance(value, Tensor)}
        shapes = op.shape(*(_shape_of(t) for t in tensors), **{**options, **{n: t.shape for n, t in constants.items()}})
        if op.output_count(options) == 1:
            shapes = (shapes,)
        names = op.operand_names
        fused = op.backward_kind is registry.Backward.FUSED
        for position, (name, t) in enumerate(zip(names, tensors), 1):
            if fused and t is not None and t.requires_grad and name not in op.grad_inputs:
                raise ValueError(f"g.{op.name}: its fused kernel gives the gradient with respect to "
                                 f"{', '.join(op.grad_inputs)} only; argument {position} (shape {t.shape}) must not "
                                 f"require a gradient ({name})")
        # an op without a backward still records its node where an input needs a gradient: backward reaching it
        # raises, naming it, rather than cutting the gradient without a word
        differentiable = self._grad_enabled and any(_requires_grad(t) for t in tensors)
        in_place = differentiable and bool(op.inplace_option and options.get(op.inplace_option))
        if in_place:
            self._check_in_place(op, tensors, constants)
        needs = tuple(differentiable and _requires_grad(t) for t in tensors) if fused else (False,) * len(tensors)
        dtypes = tuple(None if t is None else t.dtype for t in tensors)
        out_dtype = op.out_dtype(dtypes, **options) if op.out_dtype else np.dtype(np.float32)
        out_layouts = tuple(buffer_layout(math.prod(shape), out_dtype if n == 0 else np.float32)
                            for n, shape in enumerate(shapes))
        given = [_buffer_of(t) for t in tensors] + [t.buffer for t in constants.values()]
        if op.view:  # the operand's buffer under the new shape
            return self._record(op, tensors, options, shapes, given[:1], out_dtype, differentiable, (), None)
        outs = [self._engine.alloc(*layout) for layout in out_layouts]
        tracer = Tracer(self._engine, given + outs) if key is not None and not in_place else None
        ctx = registry.ForwardContext(tracer or self._engine, op, tuple(_shape_of(t) for t in tensors), outs, needs,
                                      dtypes)
        op.forward(ctx, *given[:len(tensors)], **{**options, **dict(zip(constants, given[len(tensors):]))})
        saved = [ctx.saved.get(name) for name in names] if fused and differentiable else None
        if tracer is not None:
            plan = tracer.plan(shapes, out_layouts, out_dtype, ctx.checks, saved,
                               {n: v for n, v in options.items() if n not in constants}, differentiable,
                               tuple(constants))
            self._plans.put(key, plan)
        out = self._record(op, tensors, options, shapes, outs, out_dtype, differentiable, ctx.checks, saved)
        if in_place:
            tensors[0].overwritten_by = f"g.{op.name}(..., {op.inplace_option}=True)"
        return out

    def _record(self, op, tensors, options, shapes, outs, out_dtype, differentiable, checks, saved):
        """An op's forward has run: its checks pending, its output a Tensor, on the tape if differentiable (an op of
        several outputs: a tuple of them, the first on the tape, the others float32 and not differentiable)."""
        if checks:
            for count, message in checks:
                self._record_check(count, message, ValueError)
        node = None
        if differentiable:
            if saved is not None:
                saved = tuple(None if b is None else Tensor(self, t.shape, b, dtype=t.dtype)
                              for b, t in zip(saved, tensors))
            node = autodiff.Node(op, tuple(tensors), options, saved, tuple(_version_of(t) for t in tensors))
        out = Tensor.made(self, shapes[0], outs[0], differentiable, node, out_dtype)
        results = (out,) if len(shapes) == 1 else (out, *[Tensor.made(self, shape, buffer, False, None, _FLOAT32)
                                                          for shape, buffer in zip(shapes[1:], outs[1:])])
        if self.check_finite:
            for result in results:
                with self.no_grad(), self._unchecked():  # the count's own output is not counted
                    count = self.ops.count_nonfinite(self._float32_unchecked(result))
                self._record_check(count.buffer, f"{op.name} produced {{count}} NaN or infinite values (output shape "
                                   f"{result.shape}, input shapes {', '.join(str(_shape_of(t)) for t in tensors)})",
                                   FloatingPointError)
        return out if len(results) == 1 else results

    def _float32_unchecked(self, tensor: Tensor) -> Tensor:
        """`tensor`, or its float32 copy where it is 16-bit (made without a check of its own: the caller checks)."""
        if tensor.dtype not in SIXTEEN_BIT:
            return tensor
        return self.astype(tensor, dtype="float32")

    def _record_check(self, count, message: str, error) -> None:
        """A device-side check, read with the next host read. One already pending with the same message takes the
        new count into its own (an add on the device): a loop that calls a checked op many times before it reads
        keeps one count buffer per message, not one per call, so its buffers and kernels stay the same from call
        to call."""
        checks = self._checks
        index = checks.positions.get((message, error))
        if index is None:
            checks.positions[message, error] = len(checks.waiting)
            checks.waiting.append((count, message, error))
            return
        with self._unchecked(), self.no_grad():  # the sum of two counts is finite
            total = self.add(Tensor(self, (1,), checks.waiting[index][0]), Tensor(self, (1,), count))
        checks.waiting[index] = (total.buffer, message, error)

    @contextlib.contextmanager
    def _unchecked(self):
        """Within it, ops add no check_finite count of their own: the checks' own bookkeeping."""
        checking, self.check_finite = self.check_finite, False
        try:
            yield
        finally:
            self.check_finite = checking

    @staticmethod
    def _check_in_place(op, tensors, constants) -> None:
        first = tensors[0]
        if first.is_leaf:
            raise ValueError(f"g.{op.name}({op.inplace_option}=True) would write its gradient over argument 1, a "
                             f"leaf tensor of shape {first.shape} (a parameter or an input); pass the output of an "
                             f"op, such as the last layer's logits")
        if any(t is first for t in (*tensors[1:], *constants.values())):
            raise ValueError(f"g.{op.name}({op.inplace_option}=True): argument 1 is also passed as another argument")

    # ---- autodiff ------------------------------------------------------------------------------------------
    def backward(self, loss: Tensor, retain_graph: bool = False) -> None:
        """Gradients of `loss` (shape (1,)) into `.grad` of every leaf tensor that requires one.

        Gradients add up over repeated calls, as in PyTorch; set `t.grad = None` to start again. The graph behind
        the loss is freed as backward walks it; retain_graph=True keeps it for another backward through it (of this
        loss or of another that shares part of it), as in PyTorch."""
        self.require_usable("backward")
        if not isinstance(loss, Tensor) or loss.graph is not self:
            raise ValueError("backward takes a Tensor of this Graph")
        if loss.shape != (1,):
            raise ValueError(f"backward needs a scalar loss of shape (1,), got shape {loss.shape}")
        if not loss.requires_grad:
            raise RuntimeError("backward: the loss does not require a gradient (no input has requires_grad=True)")
        if loss.node is autodiff.FREED:
            raise RuntimeError("backward: this loss's tape was already used and freed by an earlier backward")
        with self.no_grad():
            if self._seed is None:  # one for every backward: an upload a step saved (ops never write an input)
                self._seed = self._engine.upload(np.ones(1, np.float32))  # a buffer: a Tensor would name the Graph
            autodiff.backward(self, loss, Tensor(self, (1,), self._seed), retain_graph=retain_graph)

    @contextlib.contextmanager
    def _refusing(self, op_name: str, modified: dict):
        """While a backward rule of `op_name` runs, using any of `modified` as an operand raises."""
        self._modified, self._backward_op = modified, op_name
        try:
            yield
        finally:
            self._modified, self._backward_op = {}, None

    @contextlib.contextmanager
    def no_grad(self):
        """Within it, ops record no tape (backward rules run this way)."""
        previous, self._grad_enabled = self._grad_enabled, False
        try:
            yield
        finally:
            self._grad_enabled = previous

    def capture(self, fn=None, *, warmup: int = 1):
        """A training step recorded once and replayed with no Python per op: `step = g.capture(fn)`, or
        `@g.capture` on the step's function (`@g.capture(warmup=2)` to run it as it is twice first). See
        vkloss/capture.py for what a replay does and does not see."""
        if fn is None:
            return lambda function: CapturedStep(self, function, warmup)
        return CapturedStep(self, fn, warmup)

    @property
    def checks(self) -> DeviceChecks:
        """The device-side checks waiting for a host copy to carry them (vkloss/host_copy.py)."""
        return self._checks

    def before_accumulating(self, tensor: Tensor) -> None:
        """Backward is about to add into `tensor.grad`: refused while a step is captured if that gradient was made
        before the step (a replay would add to the same old value every time)."""
        if self._engine.capturing() and not self._engine.made_in_capture(tensor.grad.buffer):
            raise CaptureError(f"a captured step adds into the gradient of a tensor of shape {tensor.shape} made "
                               "before the step: zero the gradients inside it (opt.zero_grad(), or t.grad = None)")

    def reset_plans(self) -> None:
        """Forget the launch plans of earlier calls (see vkloss/plans.py): the next call of each op works its launch
        out again. Needed only where the launch policy or a kernel's constants change at run time, as tests do."""
        self._plans.clear()

    # ---- lifetime ------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Run all recorded work now."""
        self.require_usable("flush")
        self._engine.flush()

    @property
    def engine(self):
        """The device engine below this graph, for tools and benchmarks that dispatch kernels themselves."""
        return self._engine

    @property
    def closed(self) -> bool:
        return self._engine.closed

    @property
    def stats(self) -> dict:
        """Counters: submissions, dispatches, barriers, algorithms and buffers created."""
        return dict(self._engine.stats)

    def close(self) -> None:
        """Run what is recorded, then free the device's buffers and kernels. Using the graph or its tensors
        afterwards raises RuntimeError; closing twice is harmless. Like every other use, only from the thread that
        made the graph. A device-side check that failed and that no read has reported yet raises here, once the
        graph is closed."""
        self._close(report=True)

    def _close(self, report: bool) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError("close: this Graph belongs to the thread that made it; close it there")
        if self._engine.closed:
            return
        try:
            if report and self._checks.waiting:  # checks no copy carried yet: one read for them
                with self.no_grad():
                    self.host_copy(Tensor(self, (1,), self._checks.waiting[0][0]))
            self._engine.flush()
        finally:
            self._engine.close()
            checks, self._checks = self._checks, DeviceChecks()
        if report:
            checks.raise_unreported()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self._close(report=error is None)  # an exception on its way out is not replaced by a check's

    def __repr__(self) -> str:
        return f"Graph(device={self.device})"


def _shape_of(tensor):  # an optional operand left out (None) has no shape, buffer or version: None
    return None if tensor is None else tensor.shape


def _buffer_of(tensor):
    return None if tensor is None else tensor.buffer


def _version_of(tensor):
    return None if tensor is None else tensor.version


def _requires_grad(tensor) -> bool:
    return tensor is not None and tensor.requires_grad


def reserved_names() -> set[str]:
    """Names Graph uses for itself, which no op may take: all but the generated op methods."""
    return set(dir(Graph)) - set(_graph_ops.SCHEMAS)


registry.on_register(op_methods.installer(Graph))
