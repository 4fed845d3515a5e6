#version 450
// Elementwise ops, one variant per OP (vkloss/ops/elementwise.py declares them).
// One operand: y = f(x).  Two: y = f(a, b).  No loops: one invocation per element.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Bindings (B_*) and the push block (n; cols, the row length b is broadcast over) come from the kernel's declaration
// in vkloss/ops/elementwise.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
#ifdef B_X
layout(set = 0, binding = B_X) readonly buffer X { float x[]; };
#else
layout(set = 0, binding = B_A) readonly buffer A { float a[]; };
layout(set = 0, binding = B_B) readonly buffer B { float b[]; };
#endif
layout(set = 0, binding = B_Y) writeonly buffer Out { float y[]; };

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
