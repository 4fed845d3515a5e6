#version 450
// Matrix products: out[m, n] = op(a)[m, k] @ op(b)[k, n] (+ out when accumulating), op = transpose where the flag
// says. One invocation per 4 x 4 block of out; it runs one loop iteration per k, so the caller splits a longer k
// into several dispatches (lavapipe's loop limit). Each operand starts
// at an element offset into its buffer, so a block of rows (a vocabulary chunk of a weight matrix) is an operand.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(push_constant) uniform Push {
    uint m; uint n; uint k;
    uint k_begin; uint k_end;  // the slice of k this dispatch sums
    uint trans_a; uint trans_b;  // a is stored [k, m] / b is stored [n, k]
    uint accumulate;  // add to what out holds (a later slice of k)
    uint a_offset; uint b_offset; uint out_offset;  // where each operand starts in its buffer
} p;
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) buffer Out { float y[]; };

float a_at(uint row, uint kk) { return p.trans_a != 0 ? a[p.a_offset + kk * p.m + row] : a[p.a_offset + row * p.k + kk]; }
float b_at(uint kk, uint col) { return p.trans_b != 0 ? b[p.b_offset + col * p.k + kk] : b[p.b_offset + kk * p.n + col]; }

// A 4 x 4 block of out per invocation: 16 products for 8 loads each step of k (one element per invocation did one
// for two: 4.3x slower on lavapipe at 4096 x 2332 x 32), the block's rows and columns clamped at the edges and only
// the real ones written.
void main() {
    uint blocks_n = (p.n + 3) / 4;
    uint i = global_index();
    uint row0 = (i / blocks_n) * 4, col0 = (i % blocks_n) * 4;
    if (row0 >= p.m) return;
    uvec4 rows = min(uvec4(row0) + uvec4(0, 1, 2, 3), uvec4(p.m - 1));
    uvec4 cols = min(uvec4(col0) + uvec4(0, 1, 2, 3), uvec4(p.n - 1));
    mat4 acc = mat4(0.0);  // acc[c][r]: out[row0 + r][col0 + c]
    for (uint kk = p.k_begin; kk < p.k_end; ++kk) {
        vec4 av = vec4(a_at(rows.x, kk), a_at(rows.y, kk), a_at(rows.z, kk), a_at(rows.w, kk));
        vec4 bv = vec4(b_at(kk, cols.x), b_at(kk, cols.y), b_at(kk, cols.z), b_at(kk, cols.w));
        acc += outerProduct(av, bv);
    }
    for (uint r = 0; r < 4; ++r) {
        for (uint c = 0; c < 4; ++c) {
            if (row0 + r < p.m && col0 + c < p.n) {
                uint o = p.out_offset + (row0 + r) * p.n + col0 + c;
                y[o] = p.accumulate != 0 ? y[o] + acc[c][r] : acc[c][r];
            }
        }
    }
}
