#version 450
// Matrix products: out[m, n] = op(a)[m, k] @ op(b)[k, n] (+ out when accumulating), op = transpose where the flag
// says. One invocation per BLOCK x BLOCK block of out (BLOCK comes from vkloss/ops/matmul.py); it runs one loop
// iteration per k, so the caller splits a longer k into several dispatches (lavapipe's loop limit). Each operand starts
// at an element offset into its buffer, so a block of rows (a vocabulary chunk of a weight matrix) is an operand.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/matmul.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
layout(set = 0, binding = B_A) readonly buffer A { float a[]; };
layout(set = 0, binding = B_B) readonly buffer B { float b[]; };
layout(set = 0, binding = B_OUT) buffer Out { float y[]; };

float a_at(uint row, uint kk) { return p.trans_a != 0 ? a[p.a_offset + kk * p.m + row] : a[p.a_offset + row * p.k + kk]; }
float b_at(uint kk, uint col) { return p.trans_b != 0 ? b[p.b_offset + col * p.k + kk] : b[p.b_offset + kk * p.n + col]; }

#ifndef BLOCK
#error "matmul.comp: define BLOCK, the side of the block of out one invocation computes"
#endif
// BLOCK^2 products for 2 BLOCK loads each step of k (one element per invocation did one for two). On lavapipe at
// 4096 x 2332 x 32: 1,093 ms one element each, 253 ms in 4 x 4 blocks, 144 in 8 x 8, 113 in 16 x 16. The block's
// rows and columns are clamped at the edges, and only the real ones written.
void main() {
    uint blocks_n = (p.n + BLOCK - 1) / BLOCK;
    uint i = global_index();
    uint row0 = (i / blocks_n) * BLOCK, col0 = (i % blocks_n) * BLOCK;
    if (row0 >= p.m) return;
    uint rows[BLOCK], cols[BLOCK];
    [[unroll]] for (uint j = 0; j < BLOCK; ++j) {
        rows[j] = min(row0 + j, p.m - 1);
        cols[j] = min(col0 + j, p.n - 1);
    }
    float acc[BLOCK][BLOCK];  // acc[r][c]: out[row0 + r][col0 + c]
    [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] = 0.0;
    for (uint kk = p.k_begin; kk < p.k_end; ++kk) {
        float av[BLOCK], bv[BLOCK];
        [[unroll]] for (uint j = 0; j < BLOCK; ++j) {
            av[j] = a_at(rows[j], kk);
            bv[j] = b_at(kk, cols[j]);
        }
        [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] += av[r] * bv[c];
    }
    [[unroll]] for (uint r = 0; r < BLOCK; ++r) {
        [[unroll]] for (uint c = 0; c < BLOCK; ++c) {
            if (row0 + r < p.m && col0 + c < p.n) {
                uint o = p.out_offset + (row0 + r) * p.n + col0 + c;
                y[o] = p.accumulate != 0 ? y[o] + acc[r][c] : acc[r][c];
            }
        }
    }
}
