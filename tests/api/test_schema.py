"""One schema per op: typed signatures, Graph methods defined on the class, the same argument checks for every op,
binding tables and push blocks declared once in Python, and one kernel catalog that every dispatched variant is in."""
import inspect
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import vkloss
from vkloss import kernels, registry, schema
from vkloss.ops.cross_entropy import CHUNKED_KERNELS, ROW_KERNELS
from vkloss.ops.elementwise import ELEMENTWISE

_names = itertools.count()


def fresh(name):
    return f"{name}_{next(_names)}_{os.getpid()}"


def tools(*args):
    return subprocess.run([sys.executable, "-m", "vkloss.tools", *args], capture_output=True, text=True)


# ---- signatures and methods ------------------------------------------------------------------------------------
def test_the_ops_are_methods_of_graph_with_their_parameters():
    assert "cross_entropy_loss" in vkloss.Graph.__dict__ or any(
        "cross_entropy_loss" in vars(base) for base in vkloss.Graph.__mro__)
    parameters = list(inspect.signature(vkloss.Graph.cross_entropy_loss).parameters)
    assert parameters == ["self", "pred", "target", "weight", "reduction", "ignore_index", "label_smoothing",
                          "inplace_grad", "lse_square_scale", "softcap", "return_z_loss"]
    assert inspect.getsourcefile(vkloss.Graph.cross_entropy_loss).endswith("_graph_ops.py")
    assert vkloss.Graph.cross_entropy_loss.__doc__.strip().startswith("cross_entropy_loss(Float pred")


def test_the_generated_methods_are_current():
    done = tools("generate", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("op", [op for op in registry.all_ops() if op.module.startswith("vkloss.ops.")],
                         ids=lambda op: op.name)
def test_every_op_refuses_an_unknown_keyword_the_same_way(g, op):
    x = g.tensor(np.ones((2, 3)))
    operands = [x] * len([p for p in op.schema.operands if p.default is inspect.Parameter.empty])
    owner = "Ops" if op.internal else "Graph"
    with pytest.raises(TypeError, match=rf"{owner}\.{op.name}\(\) got an unexpected keyword argument 'bogus'"):
        getattr(g.ops, op.name)(*operands, bogus=1)
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


@pytest.mark.parametrize("call, error, says", [
    (lambda g, x: g.sum_all(x, scale="2"), TypeError, r"g\.sum_all: scale must be a float, got str"),
    (lambda g, x: g.sum_all(x, scale=True), TypeError, "scale must be a float, got bool"),
    (lambda g, x: g.matmul_transposed(x, x, trans_a=1), TypeError, "trans_a must be a bool"),
    (lambda g, x: g.expand(g.tensor([1.0]), shape="23"), TypeError, "shape must be a sequence of ints"),
    (lambda g, x: g.expand(g.tensor([1.0])), TypeError, r"missing 1 required keyword-only argument: 'shape'"),
    (lambda g, x: g.mse_loss(x, x, reduction=None), TypeError, "reduction must be a str"),
    (lambda g, x: g.l1_loss(x, x, reduction="avg"), ValueError, "l1_loss: reduction must be one of 'mean'"),
    (lambda g, x: g.cross_entropy_loss(x, x, label_smoothing="0.1"), TypeError, "label_smoothing must be a float"),
    (lambda g, x: g.add(x), TypeError, r"missing 1 required positional argument: 'b'"),
    (lambda g, x: g.neg(x, x), TypeError, "positional arguments but 3 were given"),
])
def test_option_types_are_checked_by_the_schema(g, call, error, says):
    x = g.tensor(np.ones((2, 3)))
    with pytest.raises(error, match=says):
        call(g, x)
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_numpy_scalars_are_taken_as_python_ones(g, rng):
    p = rng.standard_normal((4, 5)).astype(np.float32)
    a = g.cross_entropy_loss(g.tensor(p), np.arange(4), label_smoothing=np.float32(0.25), ignore_index=np.int64(2))
    b = g.cross_entropy_loss(g.tensor(p), np.arange(4), label_smoothing=0.25, ignore_index=2)
    assert a.item() == b.item()


def test_positional_bias_of_linear_cross_entropy(g, rng):
    hidden, weight = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    bias, target = rng.standard_normal(5), np.array([1, 0, 4])
    by_keyword = g.linear_cross_entropy(g.tensor(hidden), g.tensor(weight), target, bias=bias).item()
    assert g.linear_cross_entropy(g.tensor(hidden), g.tensor(weight), target, bias).item() == by_keyword


@pytest.mark.parametrize("text, says", [
    ("f(Tensor x) -> Tensor(", "expected 'name("),
    ("f(Tensr x) -> Tensor", "unknown type 'Tensr'"),
    ("f(Tensor x, Tensor x) -> Tensor", "repeats"),
    ("f(Tensor x, *, Index y=None) -> Tensor", "must be a Tensor?"),
    ("f(Tensor x, float) -> Tensor", "cannot read parameter"),
])
def test_a_malformed_schema_says_which_part(text, says):
    with pytest.raises(ValueError, match=re_escape(says)):
        schema.parse(text)


def re_escape(text):
    import re
    return re.escape(text)


def test_schema_text_round_trips():
    for op in registry.all_ops():
        assert schema.parse(op.schema.text()) == op.schema


# ---- users' ops -------------------------------------------------------------------------------------------------
SCALE = """#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(push_constant) uniform Push { uint n; float factor; } p;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
void main() { uint i = global_index(); if (i < p.n) y[i] = x[i] * p.factor; }
"""


def test_a_users_op_with_a_schema_is_a_method_checked_the_same_way(g):
    name = fresh("scale")
    vkloss.register_op(f"{name}(Tensor x, *, float factor=2.0) -> Tensor", vkloss.UserShader(
        SCALE, shape=lambda s, factor: s, push=lambda s, factor: [int(np.prod(s)), factor],
        backward=lambda ctx, grad: (getattr(ctx.g, name)(grad, factor=ctx.attrs["factor"]),)))
    try:
        method = getattr(vkloss.Graph, name)
        assert list(inspect.signature(method).parameters) == ["self", "x", "factor"]
        x = g.tensor([1.0, 2.0], requires_grad=True)
        y = getattr(g, name)(x, factor=3)
        np.testing.assert_array_equal(y.numpy(), [3.0, 6.0])
        g.backward(g.sum_all(y))
        np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
        with pytest.raises(TypeError, match=rf"Graph\.{name}\(\) got an unexpected keyword argument 'fctor'"):
            getattr(g, name)(x, fctor=3)
        with pytest.raises(TypeError, match="factor must be a float"):
            getattr(g, name)(x, factor="3")
    finally:
        vkloss.unregister_op(name)
    assert not hasattr(vkloss.Graph, name)
    with pytest.raises(AttributeError):
        getattr(g, name)


def test_generated_op_names_cannot_be_registered_again():
    with pytest.raises(ValueError, match="'neg' is already registered"):
        vkloss.register_op("neg(Tensor x) -> Tensor", vkloss.UserShader(SCALE, shape=lambda s: s))


# ---- kernels: bindings and push blocks declared once ----------------------------------------------------------
def test_a_variant_carries_its_binding_table_and_push_block_as_defines():
    variant = ROW_KERNELS.variant(mode="ROW", target_index=True, weighted=True, write_grad=True)
    defines = dict(variant.shader.defines)
    assert variant.reads == ("pred", "target", "weight") and variant.writes == ("row_loss", "bad", "grad")
    assert [defines[f"B_{n.upper()}"] for n in variant.reads + variant.writes] == ["0", "1", "2", "3", "4", "5"]
    assert defines["PUSH_CONSTANTS"].startswith("uint rows; uint classes;")
    assert defines["MODE_ROW"] == "1" and defines["TARGET_INDEX"] == "1" and defines["INPLACE"] == "0"


def test_a_switch_or_combination_outside_the_table_is_refused():
    with pytest.raises(ValueError, match="no switch colour"):
        ROW_KERNELS.variant(colour=True)
    with pytest.raises(ValueError, match="not one of"):
        ROW_KERNELS.variant(mode="STATS")  # a chunked kernel's mode, in the other file
    with pytest.raises(ValueError, match="not in its variant table"):
        CHUNKED_KERNELS.variant(mode="STATS", write_grad=True)


def test_push_constants_are_packed_by_their_declared_types():
    words = ROW_KERNELS.push_words(dict(rows=3, classes=7, scale=1, ignore_index=-100))
    assert words.dtype == np.uint32
    assert words[0] == 3 and words[1] == 7 and words[2] == 1  # chunks: its default
    assert words[4] == np.array(1.0, np.float32).view(np.uint32)  # an int given to a float field is a float
    assert words[6].view(np.int32) == -100
    with pytest.raises(ValueError, match="no push constant rowz"):
        ROW_KERNELS.push_words(dict(rows=3, classes=7, rowz=1))
    with pytest.raises(ValueError, match="push constant classes not given"):
        ROW_KERNELS.push_words(dict(rows=3))


def test_a_dispatch_binds_buffers_by_name(g):
    e = g.engine
    a, out = e.upload(np.array([1.0, -2.0], np.float32)), e.alloc(2)
    with pytest.raises(ValueError, match=r"missing \['x'\], not bound \['a'\]"):
        kernels.dispatch(e, ELEMENTWISE.variant(op="neg"), e.launch.groups_for(2), push={"n": 2}, a=a, y=out)
    kernels.dispatch(e, ELEMENTWISE.variant(op="neg"), e.launch.groups_for(2), push={"n": 2}, x=a, y=out)
    np.testing.assert_array_equal(e.read([out])[0], [-1.0, 2.0])


def test_every_kernel_variants_shader_declares_its_tables_bindings():
    from vkloss.tools.__main__ import binding_mismatches
    assert binding_mismatches() == []


def test_every_variant_the_ops_dispatch_is_in_the_catalog_tools_compile_builds(g, rng, monkeypatch):
    """Run every kernel path (sizes on both sides of each threshold, every option) and check that each variant
    dispatched is one `tools compile` builds."""
    from vkloss.ops import cross_entropy
    from vkloss.tools.__main__ import all_variants

    dispatched = set()
    original = kernels.dispatch

    def recording(engine, variant, *args, **kwargs):
        dispatched.add(variant.shader)
        return original(engine, variant, *args, **kwargs)

    monkeypatch.setattr(kernels, "dispatch", recording)
    monkeypatch.setattr(cross_entropy, "ROW_LIMIT", 300)  # the chunked path at a small size
    for classes in (5, 64, 65, 100, 301):
        for index, weighted, smoothing, inplace in itertools.product((False, True), repeat=4):
            pred = g.tensor(rng.standard_normal((3, classes)), requires_grad=True)
            target = np.array([0, 2, 1]) if index else g.tensor(rng.uniform(0, 1, (3, classes)))
            for reduction in ("mean", "none"):
                logits = g.mul_scalar(pred, g.tensor([1.0]))  # an op's output, which inplace_grad may overwrite
                loss = g.cross_entropy_loss(logits, target,
                                            weight=rng.uniform(0.5, 1, classes) if weighted else None,
                                            label_smoothing=0.1 if smoothing else 0.0, reduction=reduction,
                                            inplace_grad=inplace, ignore_index=1 if index else None)
                g.backward(g.sum_all(loss))
            with g.no_grad():
                g.cross_entropy_loss(pred, target).item()
    for weighted, pos_weight, reduction, size in itertools.product((False, True), (False, True), ("mean", "none"),
                                                                   (6, 8)):
        x = g.tensor(rng.uniform(0.1, 0.9, (2, size // 2)), requires_grad=True)
        y = g.tensor(rng.uniform(0, 1, (2, size // 2)))
        w = rng.uniform(0.5, 1, size // 2) if weighted else None
        g.backward(g.sum_all(g.bce_loss(x, y, weight=w, reduction=reduction)))
        g.backward(g.sum_all(g.bce_with_logits_loss(x, y, weight=w, reduction=reduction,
                                                    pos_weight=rng.uniform(0.5, 2, size // 2) if pos_weight else None)))
        with g.no_grad():
            g.bce_loss(x, y).item()
    for weighted, reduction in itertools.product((False, True), ("mean", "sum")):
        h, w = g.parameter(rng.standard_normal((3, 4))), g.parameter(rng.standard_normal((5, 4)))
        g.backward(g.linear_cross_entropy(h, w, np.array([0, 4, 2]), reduction=reduction,
                                          weight_classes=rng.uniform(0.5, 1, 5) if weighted else None))
        with g.no_grad():
            g.linear_cross_entropy(h, w, np.array([0, 4, 2])).item()
    a, b = g.parameter(rng.standard_normal((2, 3))), g.parameter(rng.standard_normal(3))
    loss = g.mse_loss(g.relu(g.add(a, b)), g.sigmoid(g.tensor(np.ones((2, 3)))))
    loss = g.add(loss, g.l1_loss(g.abs(g.neg(a)), g.mul(a, a)))
    loss = g.add(loss, g.sum_all(g.matmul(a, g.tensor(np.ones((3, 2))))))
    g.backward(loss)
    for optimizer in (vkloss.optim.SGD([a, b], lr=0.1, momentum=0.9), vkloss.optim.Adam([a, b])):
        optimizer.step()
    for dtype, classes in itertools.product((np.float16, "bfloat16"), (6, 8)):  # 16-bit: chunked, row kernels
        half = g.tensor(rng.standard_normal((3, classes)), dtype=dtype, requires_grad=True)
        for target in (np.array([0, 2, 1]), g.tensor(rng.uniform(0, 1, (3, classes)))):
            g.backward(g.cross_entropy_loss(half, target))
            half.grad = None
        g.backward(g.bce_with_logits_loss(half, g.tensor(np.ones((3, classes)), dtype=dtype)))
        half.grad = None
        g.backward(g.linear_cross_entropy(half, g.tensor(np.ones((4, classes)), dtype=dtype), np.array([0, 3, 1])))
    with g.no_grad():
        g.cross_entropy_loss(g.tensor(np.full((1, 3), np.nan)), np.array([0])).item()
    checked = vkloss.Graph(check_finite=True)
    checked.neg(checked.tensor([1.0])).item()
    checked.close()
    g.flush()
    catalog = set(all_variants())
    assert dispatched and dispatched <= catalog, sorted(v.name for v in dispatched - catalog)


# ---- the README's new fused loss: one Python file and one shader ------------------------------------------------
def test_the_readmes_new_fused_loss_runs_from_one_file_and_one_shader(g, rng, tmp_path):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Adding an op"):]
    python = re.search(r"```python\n(import math.*?)```", section, re.S).group(1)
    glsl = re.search(r"```glsl\n(.*?)```", section, re.S).group(1)
    (tmp_path / "hinge.comp").write_text(glsl)
    name = fresh("hinge_loss")
    module = (python.replace("from ..", "from vkloss.").replace("from .reductions", "from vkloss.ops.reductions")
              .replace('"hinge.comp"', repr(str(tmp_path / "hinge.comp"))).replace('"hinge_loss(', f'"{name}('))
    exec(compile(module, str(tmp_path / "hinge.py"), "exec"), {"__name__": "hinge"})
    try:
        x = rng.standard_normal((4, 5))
        y = rng.choice([-1.0, 1.0], (4, 5))
        pred = g.tensor(x, requires_grad=True)
        loss = getattr(g, name)(pred, g.tensor(y))
        g.backward(loss)
        margin = np.maximum(0.0, 1.0 - y * x)
        assert loss.item() == pytest.approx((margin ** 2).mean(), rel=1e-6)
        np.testing.assert_allclose(pred.grad.numpy(), -2 * margin * y / x.size, rtol=1e-5, atol=1e-7)
        per_element = getattr(g, name)(g.tensor(x), g.tensor(y), reduction="none").numpy()
        np.testing.assert_allclose(per_element, margin ** 2, rtol=1e-6)
        away_from_the_kink = rng.uniform(-0.8, 0.8, (4, 5))  # margins in (0.2, 1.8)
        assert vkloss.gradcheck(lambda p: getattr(g, name)(p, g.tensor(y), reduction="sum"),
                                [g.tensor(away_from_the_kink)])
        listed = [op.name for op in registry.all_ops()]
        assert name in listed and list(inspect.signature(getattr(vkloss.Graph, name)).parameters) == [
            "self", "pred", "labels", "reduction"]
    finally:
        vkloss.unregister_op(name)


def test_an_op_with_a_kernel_needs_a_shape_rule():
    with pytest.raises(TypeError, match="shape"):
        vkloss.register_op(f"{fresh('shapeless')}(Tensor x) -> Tensor", vkloss.UserShader(SCALE))
