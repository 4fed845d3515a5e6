"""Linear cross-entropy: the last layer and the loss together, the logits never held at once.
shaders/linear_cross_entropy.comp, with the products from shaders/matmul.comp.

The vocabulary is taken in chunks of as many classes as a workspace of WORKSPACE_BYTES holds for every row. A first
sweep makes each chunk's logits (hidden @ weight_chunk.T) and folds them into per-row running statistics (max, sum
of exponentials, the target's share), as an online log-sum-exp; a short pass turns them into the row losses. When a
gradient is wanted, a second sweep makes each chunk's logits again, turns them into d(loss)/d(logits) in place, and
accumulates d hidden += g @ weight_chunk, writes d weight_chunk = g.T @ hidden and d bias_chunk = sum of g's rows:
Liger-Kernel's fused linear cross-entropy, as Vulkan kernels. Device memory is the inputs, their gradients and the
workspace, whatever rows x classes is.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import shaders
from ..registry import FusedResult, register_op
from .linalg import matmul_into
from .losses import check_index_options, index_target_checks
from .reductions import tree_sum

SHADER = "linear_cross_entropy.comp"
WORKSPACE_BYTES = 32 << 20  # one chunk of logits, rows x chunk floats
REDUCTIONS = ("mean", "sum")


@functools.cache
def _variant(mode: str, weighted: bool = False, norm_buffer: bool = False, first: bool = False) -> shaders.Variant:
    flags = {"WEIGHTED": weighted, "NORM_BUFFER": norm_buffer, "FIRST": first}
    return shaders.variant(SHADER, **{f"MODE_{mode}": 1}, **{k: 1 for k, on in flags.items() if on})


def _variants() -> list[shaders.Variant]:
    """Every variant _forward may dispatch."""
    found = []
    for weighted in (False, True):
        found += [_variant("STATS", weighted, first=first) for first in (True, False)]
        for norm in (False, True):
            found += [_variant("LOSS", weighted, norm), _variant("GRAD", weighted, norm)]
    return found


def chunk_classes(engine, rows: int, classes: int) -> int:
    """Classes per chunk: a workspace of WORKSPACE_BYTES (and one storage binding) for every row."""
    limit = min(WORKSPACE_BYTES, engine.device.max_storage_buffer_range) // (4 * rows)
    return max(1, min(classes, limit))


def _shape(hidden, weight, target, bias, reduction="mean", ignore_index=-100, label_smoothing=0.0,
           weight_classes=None):
    name = "linear_cross_entropy"
    if len(hidden) != 2 or len(weight) != 2 or hidden[1] != weight[1]:
        raise ValueError(f"{name}: needs hidden [rows, features] and weight [classes, features] (nn.Linear's "
                         f"layout); got hidden {hidden} and weight {weight}")
    rows, classes = hidden[0], weight[0]
    if target != (rows,):
        raise ValueError(f"{name}: target must be class indices [rows] = ({rows},); got {target} beside hidden "
                         f"{hidden}")
    if bias != (classes,):
        raise ValueError(f"{name}: bias must have shape ({classes},), one per class; got {bias} beside weight {weight}")
    if weight_classes is not None and weight_classes != (classes,):
        raise ValueError(f"{name}: weight_classes must have shape ({classes},); got {weight_classes}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'mean' or 'sum', got {reduction!r} ('none' would need each "
                         "row's upstream gradient inside the fused weight gradient: use matmul and "
                         "cross_entropy_loss)")
    if ignore_index is None:
        raise ValueError(f"{name}: ignore_index must be an int (PyTorch's default is -100), got None")
    check_index_options(name, ignore_index, label_smoothing)
    return (1,)


def _forward(engine, inputs, out, shapes, want_grad, reduction="mean", ignore_index=-100, label_smoothing=0.0,
             weight_classes=None):
    hidden, weight, target, bias = inputs
    (rows, features), (classes, _) = shapes[0], shapes[1]
    if target.dtype != np.int32:
        raise TypeError(f"linear_cross_entropy: target must be int32 class indices, got {target.dtype}")
    weighted = weight_classes is not None
    weights = [weight_classes] if weighted else []
    mean = reduction == "mean"
    push = [rows, classes, 0, 0, 1.0, float(label_smoothing), int(ignore_index), 1]
    check, norm = index_target_checks(engine, target, weight_classes, push, ignore_index, mean,
                                      f"linear_cross_entropy: {{count}} class indices of target (shape ({rows},)) "
                                      f"are outside {{allowed}}, beside weight ({classes}, {features})")
    norms = [norm] if mean else []
    chunk = chunk_classes(engine, rows, classes)
    chunks = [(begin, min(chunk, classes - begin)) for begin in range(0, classes, chunk)]
    logits, stats = engine.alloc(rows * chunk), engine.alloc(rows * 4)

    def make_logits(begin, width):  # logits[rows, width] = hidden @ weight[begin:begin + width].T
        matmul_into(engine, hidden, weight, logits, rows, width, features, trans_b=True, offsets=(0, begin * features, 0))

    for begin, width in chunks:
        make_logits(begin, width)
        push[2:4] = [begin, width]
        engine.dispatch(_variant("STATS", weighted, first=begin == 0), [target, *weights, logits, bias], [stats],
                        push, engine.grid(rows), workgroup=engine.row_workgroup(width))
    row_loss = engine.alloc(rows)
    engine.dispatch(_variant("LOSS", weighted, mean), [target, *weights, *norms], [stats, row_loss], push,
                    engine.groups_for(rows))
    tree_sum(engine, row_loss, rows, out, 1.0)
    if not want_grad:
        return FusedResult(checks=[check])
    grad_hidden, grad_weight, grad_bias = engine.alloc(rows * features), engine.alloc(classes * features), \
        engine.alloc(classes)
    ones = engine.upload(np.ones(rows, np.float32))
    for index, (begin, width) in enumerate(chunks):
        make_logits(begin, width)
        push[2:4] = [begin, width]
        engine.dispatch(_variant("GRAD", weighted, mean), [target, *weights, *norms, bias, stats], [logits], push,
                        engine.groups_for(rows * width))
        # logits now hold g = d(loss)/d(logits) for the chunk
        matmul_into(engine, logits, weight, grad_hidden, rows, features, width, accumulate=index > 0,
                    offsets=(0, begin * features, 0))  # d hidden (+)= g @ weight_chunk
        matmul_into(engine, logits, hidden, grad_weight, width, features, rows, trans_a=True,
                    offsets=(0, 0, begin * features))  # d weight_chunk = g.T @ hidden
        matmul_into(engine, ones, logits, grad_bias, 1, width, rows, offsets=(0, 0, begin))  # d bias_chunk
    return FusedResult(checks=[check], grads=[grad_hidden, grad_weight, None, grad_bias])


def _backward(ctx, grad):
    """The gradients the forward computed, times the upstream gradient unless that is the seed 1."""
    return tuple(None if saved is None or not need else saved if ctx.upstream_is_one else ctx.g.mul_scalar(saved, grad)
                 for saved, need in zip(ctx.saved, ctx.needs))


OPTIONS = {
    "reduction": "'mean' (default) | 'sum'",
    "ignore_index": "int (default -100): rows with this class index count for nothing",
    "label_smoothing": "float in [0, 1]",
    "weight_classes": "class weights [classes]: array or Tensor",
}

register_op(
    "linear_cross_entropy_with_bias", _variant("STATS"), inputs=4, fused=True, grad_inputs=(1, 2, 4),
    options=OPTIONS, tensor_attrs=("weight_classes",), integer_inputs=(3,), shape=_shape, forward=_forward,
    backward=_backward, variants=_variants,
    doc="linear_cross_entropy_with_bias(hidden, weight, target, bias, ...): linear_cross_entropy with a bias "
        "tensor (which may require a gradient); see linear_cross_entropy.",
)


def _compose(g, hidden, weight, target, bias=None, **options):
    if bias is None:
        bias = g.tensor(np.zeros(weight.shape[0], np.float32))
    elif not hasattr(bias, "graph"):
        bias = g.tensor(bias)
    return g.linear_cross_entropy_with_bias(hidden, weight, target, bias, **options)


register_op(
    "linear_cross_entropy", inputs=3, compose=_compose, integer_inputs=(3,), options={"bias": "[classes]", **OPTIONS},
    doc="linear_cross_entropy(hidden, weight, target, *, bias=None, reduction='mean', ignore_index=-100, "
        "label_smoothing=0.0, weight_classes=None) -> (1,). PyTorch's F.cross_entropy(F.linear(hidden, weight, "
        "bias), target, ...): hidden [rows, features], weight [classes, features] (nn.Linear's layout), target "
        "class indices [rows] (an int32 Tensor or an integer numpy array), bias [classes]. The rows x classes "
        "logits are never held at once: the vocabulary is swept in chunks with an online log-sum-exp, and with a "
        "gradient the forward sweeps again and accumulates d hidden, d weight and d bias chunk by chunk (backward "
        "hands them over). Device memory: the inputs, their gradients and a 32 MiB workspace. reduction 'mean' "
        "divides by the counted rows' summed class weight, as PyTorch does.",
)
