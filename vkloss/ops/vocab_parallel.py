"""The tape's end of vocabulary-parallel cross-entropy (vkloss/distributed.py): a loss whose value and gradients
were computed across ranks, attached to its operands as a fused kernel's are. No shader: a copy of the value."""
from __future__ import annotations

from ..implementations import FusedKernel
from ..registry import register_op


def _shape(hidden, weight, bias, value=None, d_hidden=None, d_weight=None, d_bias=None):
    if value != (1,) or d_hidden != hidden or d_weight != weight or d_bias != bias:
        raise ValueError(f"vocab_parallel_loss: value {value} must be (1,), and the gradients {d_hidden}, {d_weight}, "
                         f"{d_bias} the shapes of hidden {hidden}, weight {weight} and bias {bias}")
    return value


def _forward(ctx, hidden, weight, bias, value=None, d_hidden=None, d_weight=None, d_bias=None):
    ctx.copy(value, ctx.out)
    ctx.save_for_backward(d_hidden, d_weight, d_bias)


register_op(
    "vocab_parallel_loss(Tensor hidden, Tensor weight, Tensor bias, *, Tensor? value=None, Tensor? d_hidden=None, "
    "Tensor? d_weight=None, Tensor? d_bias=None) -> Tensor",
    FusedKernel(shape=_shape, forward=_forward, grad_inputs=("hidden", "weight", "bias")), internal=True,
    doc="(1,): `value`, with the gradients computed beside it across ranks (vkloss.distributed."
        "vocab_parallel_cross_entropy) saved for backward, as a fused kernel saves its own.",
)
