#version 450
// Elementwise ops, one variant per OP (vkloss/ops/elementwise.py declares them), each applying APPLY, the op's
// function in elementwise_ops.glsl. One operand: y = f(x). Two: y = f(a, b); ADD_ROW, MUL_SCALAR and MUL_ROWS
// broadcast b (a bias row, a scalar, a scale per row) and apply op_add or op_mul. No loops: one invocation per access
// of ACCESS_WIDTH elements (1, 4 or 8: access.glsl), the op applied to each of its PER_LOAD ELEMENTs.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "access.glsl"
#include "elementwise_ops.glsl"  // op_<name>: each op's maths

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
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) r[h] = APPLY(u[h], v[h], p.s);  // b unused by one-operand ops
    STORE_JOINED(y, i, r);
}
