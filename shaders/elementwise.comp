#version 450
// Elementwise ops, one variant per OP (vkloss/ops/elementwise.py declares them).
// ARITY 1: out = f(x).  ARITY 2: out = f(a, b).  No loops: one invocation per element.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(push_constant) uniform Push { uint n; uint cols; } p;  // cols: the row length b is broadcast over

#if ARITY == 1
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float y[]; };
#else
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) writeonly buffer Out { float y[]; };
#endif

void main() {
    uint i = global_index();
    if (i >= p.n) return;
#if OP_NEG
    y[i] = -x[i];
#elif OP_ABS
    y[i] = abs(x[i]);
#elif OP_SIGMOID
    y[i] = 1.0 / (1.0 + exp(-x[i]));
#elif OP_RELU
    y[i] = max(x[i], 0.0);
#elif OP_ADD
    y[i] = a[i] + b[i];
#elif OP_ADD_ROW
    // a is [rows, cols], b is [cols]: the bias of a linear layer
    y[i] = a[i] + b[i % p.cols];
#elif OP_MUL
    y[i] = a[i] * b[i];
#elif OP_MUL_SCALAR
    // b has one element: a scale, such as an upstream gradient
    y[i] = a[i] * b[0];
#elif OP_MUL_ROWS
    // a is [rows, cols], b is [rows]: each row times its scale
    y[i] = a[i] * b[i / p.cols];
#elif OP_ABS_BACKWARD
    // a = upstream gradient, b = x. sign(0) = 0: abs has gradient 0 at 0, as in PyTorch.
    y[i] = a[i] * sign(b[i]);
#elif OP_RELU_BACKWARD
    // a = upstream gradient, b = x. Gradient 0 at x = 0, as in PyTorch.
    y[i] = b[i] > 0.0 ? a[i] : 0.0;
#elif OP_SIGMOID_BACKWARD
    // a = upstream gradient, b = sigmoid(x) saved by the forward pass.
    y[i] = a[i] * b[i] * (1.0 - b[i]);
#else
#error "elementwise.comp: no OP_* defined"
#endif
}
