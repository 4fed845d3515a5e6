"""The registry as a plugin surface: a user's op from outside the package (examples/custom_op), gradcheck on every
built-in op, and a clear error for each mistake a user can make when registering one."""
import itertools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import vkloss
from helpers import f32
from vkloss.errors import ShaderCompileError

CUSTOM = pathlib.Path(__file__).resolve().parents[2] / "examples" / "custom_op"
sys.path.insert(0, str(CUSTOM))
import huber  # noqa: E402,F401  (registers g.huber, g.huber_backward, g.huber_loss)

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

_names = itertools.count()


def fresh(name):
    return f"{name}_{next(_names)}_{os.getpid()}"


def one(name):
    """The schema of a user's op of one operand."""
    return f"{name}(Tensor x) -> Tensor"


def huber_reference(p, t, delta):
    d = f32(p) - f32(t)
    small = np.abs(d) < delta
    loss = np.where(small, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta)).mean()
    return loss, np.where(small, d, delta * np.sign(d)) / d.size


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_matches_float64_and_pytorch(g, rng, delta):
    p, t = (rng.standard_normal((16, 7)) * 2).astype(np.float32), rng.standard_normal((16, 7)).astype(np.float32)
    tp = g.tensor(p, requires_grad=True)
    loss = g.huber_loss(tp, g.tensor(t), delta=delta)
    g.backward(loss)
    ref_loss, ref_grad = huber_reference(p, t, delta)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(tp.grad.numpy(), ref_grad, rtol=1e-5, atol=1e-9)
    if torch is not None:
        tt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
        F.huber_loss(tt, torch.tensor(t, dtype=torch.float64), delta=delta).backward()
        np.testing.assert_allclose(tp.grad.numpy(), tt.grad.numpy(), rtol=1e-5, atol=1e-9)


def test_huber_passes_gradcheck_for_both_inputs(g, rng):
    p, t = rng.standard_normal((3, 4)) * 2, rng.standard_normal((3, 4))
    assert vkloss.gradcheck(lambda a, b: g.huber_loss(a, b, delta=1.0), [g.tensor(p), g.tensor(t)])


def test_huber_training_example_runs():
    done = subprocess.run([sys.executable, "train_huber.py"], cwd=CUSTOM, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "slope 3.0" in done.stdout


def test_tools_compile_check_and_list_a_users_ops():
    env = dict(os.environ)  # the session's cache: the built-in variants compiled once for the whole run
    for command in ("compile", "check", "list"):
        done = subprocess.run([sys.executable, "-m", "vkloss.tools", "--import", "huber", command], cwd=CUSTOM,
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert "huber" in done.stdout
    assert "| huber_loss" in done.stdout and "primitive autodiff" in done.stdout


# every differentiable built-in op, through the public gradcheck
BUILTIN_CASES = {
    "neg": (lambda g, x: g.neg(x), [(2, 3)]),
    "abs": (lambda g, x: g.abs(x), [(2, 3)]),
    "astype": (lambda g, x: g.astype(x, dtype="float32"), [(2, 3)]),  # 16-bit casts: tests/ops/test_sixteen_bit.py
    "sigmoid": (lambda g, x: g.sigmoid(x), [(2, 3)]),
    "relu": (lambda g, x: g.relu(x), [(2, 3)]),
    "add": (lambda g, a, b: g.add(a, b), [(2, 3), (2, 3)]),
    "add_bias": (lambda g, a, b: g.add(a, b), [(2, 3), (3,)]),
    "mul": (lambda g, a, b: g.mul(a, b), [(2, 3), (2, 3)]),
    "mul_scalar": (lambda g, a, s: g.mul_scalar(a, s), [(2, 3), (1,)]),
    "mean_all": (lambda g, x: g.mean_all(x), [(2, 3)]),
    "sum_all": (lambda g, x: g.sum_all(x, scale=0.5), [(2, 3)]),
    "expand": (lambda g, s: g.expand(s, shape=(2, 3), scale=1.5), [(1,)]),
    "matmul": (lambda g, a, b: g.matmul(a, b), [(2, 3), (3, 4)]),
    "linear": (lambda g, x, w, b: g.linear(x, w, b, activation="relu"), [(5, 3), (4, 3), (4,)]),
    "sub": (lambda g, a, b: g.sub(a, b), [(2, 3), (2, 3)]),
    "div": (lambda g, a, b: g.div(a, b), [(2, 3), (2, 3)]),
    "exp": (lambda g, x: g.exp(x), [(2, 3)]),
    "log": (lambda g, x: g.log(g.abs(x)), [(2, 3)]),
    "tanh": (lambda g, x: g.tanh(x), [(2, 3)]),
    "scale": (lambda g, x: g.scale(x, s=-1.5), [(2, 3)]),
    "shift": (lambda g, x: g.shift(x, s=2.0), [(2, 3)]),
    "sum": (lambda g, x: g.sum(x, dim=1), [(2, 3, 2)]),
    "mean": (lambda g, x: g.mean(x, dim=0, keepdim=True), [(2, 3)]),
    "broadcast_axis": (lambda g, x: g.broadcast_axis(x, shape=(2, 4, 3), dim=1, scale=0.5), [(2, 3)]),
    "reshape": (lambda g, x: g.reshape(x, shape=(3, 2)), [(2, 3)]),
    "transpose": (lambda g, x: g.transpose(x, dim0=0, dim1=2), [(2, 3, 2)]),
    "softmax": (lambda g, x: g.softmax(x, dim=0), [(3, 4)]),
    "log_softmax": (lambda g, x: g.log_softmax(x), [(3, 4)]),
    "embedding": (lambda g, w: g.embedding(w, np.array([[2, 0], [2, 1]])), [(4, 3)]),
    "cross_entropy_loss": (lambda g, p, t: g.cross_entropy_loss(p, t), [(3, 5), (3, 5)]),
    "bce_loss": (lambda g, p, y: g.bce_loss(g.sigmoid(p), y), [(2, 3), (2, 3)]),
    "bce_with_logits_loss": (lambda g, p, y: g.bce_with_logits_loss(p, y, pos_weight=np.array([0.5, 2.0, 1.0]),
                                                                    reduction="sum"), [(2, 3), (2, 3)]),
    "cross_entropy_loss_index": (lambda g, p, t: g.cross_entropy_loss(p, np.array([4, 0, 1]), label_smoothing=0.2,
                                                                      weight=np.arange(1.0, 6.0)), [(3, 5), (3, 5)]),
    "mse_loss": (lambda g, p, t: g.mse_loss(p, t), [(2, 3), (2, 3)]),
    "l1_loss": (lambda g, p, t: g.l1_loss(p, t), [(2, 3), (2, 3)]),
    "linear_cross_entropy": (lambda g, h, w: g.linear_cross_entropy(h, w, np.array([1, 0, 3])), [(3, 4), (5, 4)]),
    "linear_cross_entropy_with_bias": (
        lambda g, h, w, b: g.linear_cross_entropy_with_bias(h, w, g.tensor(np.array([1, 4, 3]), dtype=np.int32), b,
                                                            label_smoothing=0.1, reduction="sum"),
        [(3, 4), (5, 4), (5,)]),
    "sum_rows": (lambda g, x: g.sum_rows(x), [(3, 4)]),
    "matmul_transposed": (lambda g, a, b: g.matmul_transposed(a, b, trans_a=True, trans_b=True), [(3, 2), (4, 3)]),
    "linear_cross_entropy_rows": (  # reduction='none', each row its own upstream gradient, Liger's options on
        lambda g, h, w, b: g.sum(g.mul(g.linear_cross_entropy_rows(
            h, w, np.array([1, 4, 3]), b, softcap=2.0, lse_square_scale=0.01), g.tensor([0.5, 2.0, 1.0]))),
        [(3, 4), (5, 4), (5,)]),
}


@pytest.mark.parametrize("name", BUILTIN_CASES)
def test_every_builtin_op_passes_gradcheck(g, rng, name):
    fn, shapes = BUILTIN_CASES[name]
    # values away from 0 (abs, relu and l1 have kinks there); targets of the losses as they require
    arrays = [rng.uniform(0.2, 1.5, s) * rng.choice([-1, 1], s) for s in shapes]
    if name in ("cross_entropy_loss", "cross_entropy_loss_index", "bce_loss", "bce_with_logits_loss"):
        arrays[1] = rng.uniform(0, 1, shapes[1])
        inputs = [g.tensor(a) for a in arrays]
        assert vkloss.gradcheck(lambda p: fn(g, p, inputs[1]), inputs[:1])  # fused: gradient for pred only
    else:
        assert vkloss.gradcheck(lambda *ts: fn(g, *ts), [g.tensor(a) for a in arrays])


def test_every_differentiable_builtin_op_has_a_gradcheck_case():
    from vkloss import registry

    builtin = [op.name for op in registry.all_ops() if op.backward_kind is not vkloss.Backward.NONE
               and op.module.startswith("vkloss.ops.")
               and not op.name.startswith("huber")]  # the example's ops: its own tests above
    assert [name for name in builtin if name not in BUILTIN_CASES] == []


def test_public_means_differentiable_and_internal_kernels_are_not_graph_methods(g):
    """Every Graph method of vkloss's own ops has a backward; the kernels backward rules call are g.ops alone."""
    from vkloss import registry

    ops = [op for op in registry.all_ops() if op.module.startswith("vkloss.")]
    assert [op.name for op in ops if not op.internal and op.backward_kind is vkloss.Backward.NONE] == []
    internal = [op.name for op in ops if op.internal]
    assert {"count_nonfinite", "mul_rows", "relu_backward", "softmax_backward", "linear_grad_input"} <= set(internal)
    for name in internal:
        assert not hasattr(vkloss.Graph, name) and callable(getattr(g.ops, name))
        with pytest.raises(AttributeError, match=rf"internal op.*g\.ops\.{name}"):
            getattr(g, name)
    np.testing.assert_array_equal(g.ops.relu_backward(g.tensor([1.0, 2.0]), g.tensor([-1.0, 1.0])).numpy(), [0, 2])
    assert g.ops.add is not None and "relu_backward" in dir(g.ops)


def test_gradcheck_catches_a_wrong_backward_rule(g, rng):
    src = (CUSTOM / "huber.comp").read_text()
    name = fresh("wrong_huber")
    vkloss.register_op(f"{name}(Tensor pred, Tensor target, *, float delta=1.0) -> Tensor",
                       vkloss.UserShader(src, defines={"MODE_FORWARD": 1}, shape=huber.same_shape, push=huber.push,
                                         backward=lambda ctx, grad: (ctx.g.mul(grad, grad), None)))
    with pytest.raises(vkloss.GradcheckError, match="input 0"):
        vkloss.gradcheck(lambda a, b: getattr(g, name)(a, b), [g.tensor(rng.standard_normal(4)),
                                                               g.tensor(rng.standard_normal(4))])


# ---- mistakes --------------------------------------------------------------------------------------------------
ADD_ONE = """#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(push_constant) uniform Push { uint n; } p;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
void main() { uint i = global_index(); if (i < p.n) y[i] = x[i] + 1.0; }
"""


def test_a_user_op_from_source_text_runs(g):
    name = fresh("add_one")
    vkloss.register_op(one(name), vkloss.UserShader(ADD_ONE, shape=lambda s: s))
    np.testing.assert_array_equal(getattr(g, name)(g.tensor([1.0, 2.0])).numpy(), [2.0, 3.0])
    assert name in dir(g)


def test_a_name_that_is_taken(g):
    with pytest.raises(ValueError, match="'add' is already registered"):
        vkloss.register_op(one("add"), vkloss.UserShader(ADD_ONE, shape=lambda s: s))
    with pytest.raises(ValueError, match="schema"):
        vkloss.register_op(one("two words"), vkloss.UserShader(ADD_ONE, shape=lambda s: s))
    with pytest.raises(ValueError, match=r"schema 'add_two': expected 'name\(Type arg"):  # a name alone
        vkloss.register_op("add_two", vkloss.UserShader(ADD_ONE, shape=lambda s: s))
    with pytest.raises(ValueError, match="the first argument is the op's schema"):
        vkloss.register_op(None, vkloss.UserShader(ADD_ONE, shape=lambda s: s))


def test_an_implementation_that_is_not_one_of_the_kinds():
    with pytest.raises(ValueError, match="must be one of FusedKernel, ForwardKernel, Composed, View, UserShader"):
        vkloss.register_op(one(fresh("no_kind")), lambda g, x: x)
    with pytest.raises(ValueError, match="backward must be a function"):
        vkloss.register_op(one(fresh("bad_rule")), vkloss.UserShader(ADD_ONE, shape=lambda s: s, backward="fused"))


def test_a_shader_that_does_not_compile_names_file_and_line():
    broken = ADD_ONE.replace("x[i] + 1.0", "x[i] + undefined_value")
    with pytest.raises(ShaderCompileError, match=r"\.comp:7.*undefined_value"):
        vkloss.register_op(one(fresh("broken")), vkloss.UserShader(broken, shape=lambda s: s))


def test_a_shader_file_that_is_missing():
    with pytest.raises(ValueError, match="not found"):
        vkloss.register_op(one(fresh("missing")), vkloss.UserShader("no/such/file.comp", shape=lambda s: s))


def test_a_binding_count_that_does_not_match_inputs_and_output():
    with pytest.raises(ValueError, match=r"declares 2 buffer bindings, but an op with 2 input\(s\) and one output "
                                         r"binds 3"):
        vkloss.register_op(f"{fresh('miscount')}(Tensor a, Tensor b) -> Tensor",
                           vkloss.UserShader(ADD_ONE, shape=lambda a, b: a))


def test_a_shape_rule_that_raises_names_the_op_and_shapes(g):
    name = fresh("bad_shape")
    vkloss.register_op(one(name), vkloss.UserShader(ADD_ONE, shape=lambda s: (s[5],)))
    with pytest.raises(ValueError, match=rf"{name}: its shape rule failed for input shapes \(\(2,\),\): IndexError"):
        getattr(g, name)(g.tensor([1.0, 2.0]))
    other = fresh("bad_shape_result")
    vkloss.register_op(one(other), vkloss.UserShader(ADD_ONE, shape=lambda s: "big"))
    with pytest.raises(ValueError, match="expected a tuple of positive ints"):
        getattr(g, other)(g.tensor([1.0]))


@pytest.mark.parametrize("rule, message", [
    (lambda ctx, grad: (grad, grad), "returned 2 gradients for 1 inputs"),
    (lambda ctx, grad: (ctx.g.sum_all(grad),), r"gave a gradient of shape \(1,\) for an input of shape \(3,\)"),
])
def test_a_backward_rule_with_wrong_gradients(g, rule, message):
    name = fresh("bad_backward")
    vkloss.register_op(one(name), vkloss.UserShader(ADD_ONE, shape=lambda s: s, backward=rule))
    x = g.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=rf"backward of {name} {message}"):
        g.backward(g.sum_all(getattr(g, name)(x)))


@pytest.mark.parametrize("name", ["close", "tensor", "backward", "stats"])
def test_register_op_refuses_names_graph_already_uses(name):
    with pytest.raises(ValueError, match=f"{name!r} is already a Graph attribute"):
        vkloss.register_op(f"{name}(Tensor x) -> Tensor", vkloss.UserShader("void main() {}", shape=lambda s: s,
                                                                            validate=False))
