#version 450
// Elementwise ops, one variant per OP (vkloss/ops/elementwise.py declares them).
// One operand: y = f(x).  Two: y = f(a, b).  No loops: one invocation per access of ACCESS_WIDTH elements (1, 4 or
// 8: access.glsl), the op applied to each of its PER_LOAD ELEMENTs.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "access.glsl"
#if OP_LOG || OP_TANH
#include "losses.glsl"  // log_accurate and tanh_accurate: GLSL's log and tanh lose digits near 1 and near 0
#endif

// Bindings (B_*) and the push block (n, and cols, the row length b is broadcast over, both counted in accesses; s,
// a scalar option of SCALE and SHIFT) come from the kernel's declaration in vkloss/ops/elementwise.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
#ifdef B_X
layout(set = 0, binding = B_X) readonly buffer X { STORED x[]; };
#else
layout(set = 0, binding = B_A) readonly buffer A { STORED a[]; };
#if OP_MUL_SCALAR || OP_MUL_ROWS
// one scale for a whole access: the scalar, or its row's (the caller keeps an access within a row)
layout(set = 0, binding = B_B) readonly buffer B { float b[]; };
#else
layout(set = 0, binding = B_B) readonly buffer B { STORED b[]; };
#endif
#endif
layout(set = 0, binding = B_Y) writeonly buffer Out { STORED y[]; };

#if VEC4
#define POSITIVE(v) greaterThan(v, vec4(0.0))
#else
#define POSITIVE(v) ((v) > 0.0)
#endif

ELEMENT apply(ELEMENT a, ELEMENT b) {  // b is unused by the one-operand ops
#if OP_NEG
    return -a;
#elif OP_ABS
    return abs(a);
#elif OP_SIGMOID
    return 1.0 / (1.0 + exp(-a));
#elif OP_RELU
    return max(a, ELEMENT(0.0));
#elif OP_EXP
    return exp(a);
#elif OP_LOG
    return log_accurate(a);
#elif OP_TANH
    return tanh_accurate(a);
#elif OP_SCALE
    return a * p.s;
#elif OP_SHIFT
    return a + p.s;
#elif OP_ADD || OP_ADD_ROW
    // ADD_ROW: a is [rows, cols], b is [cols]: the bias of a linear layer
    return a + b;
#elif OP_SUB
    return a - b;
#elif OP_DIV
    return a / b;
#elif OP_MUL || OP_MUL_SCALAR || OP_MUL_ROWS
    // MUL_SCALAR: b is one element, a scale such as an upstream gradient; MUL_ROWS: a is [rows, cols], b is [rows],
    // each row times its scale
    return a * b;
#elif OP_ABS_BACKWARD
    // a = upstream gradient, b = x. sign(0) = 0: abs has gradient 0 at 0, as in PyTorch.
    return a * sign(b);
#elif OP_RELU_BACKWARD
    // a = upstream gradient, b = x. Gradient 0 at x = 0, as in PyTorch; mix() selects, so a NaN gradient stays put
    return mix(ELEMENT(0.0), a, POSITIVE(b));
#elif OP_SIGMOID_BACKWARD
    // a = upstream gradient, b = sigmoid(x) saved by the forward pass.
    return a * b * (1.0 - b);
#elif OP_TANH_BACKWARD
    // a = upstream gradient, b = tanh(x) saved by the forward pass.
    return a * (1.0 - b * b);
#else
#error "elementwise.comp: no OP_* defined"
#endif
}

void main() {
    uint i = global_index();
    if (i >= p.n) return;
    ELEMENT u[PER_LOAD], v[PER_LOAD], r[PER_LOAD];
#ifdef B_X
    LOAD_SPLIT(x, i, u);
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v[h] = ELEMENT(0.0);
#else
    LOAD_SPLIT(a, i, u);
#if OP_MUL_SCALAR
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v[h] = ELEMENT(b[0]);
#elif OP_MUL_ROWS
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v[h] = ELEMENT(b[i / p.cols]);
#elif OP_ADD_ROW
    LOAD_SPLIT(b, i % p.cols, v);
#else
    LOAD_SPLIT(b, i, v);
#endif
#endif
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) r[h] = apply(u[h], v[h]);
    STORE_JOINED(y, i, r);
}
