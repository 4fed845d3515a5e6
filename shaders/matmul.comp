#version 450
// Matrix products: out[m, n] = op(a)[m, k] @ op(b)[k, n] (+ out when ACCUMULATE), op = transpose where the flag
// says. One invocation per output element; the k loop is unrolled four at a time, so an invocation runs k / 4
// iterations. The caller splits a longer k into several dispatches (lavapipe's loop limit).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(push_constant) uniform Push {
    uint m; uint n; uint k;
    uint k_begin; uint k_end;  // the slice of k this dispatch sums
    uint trans_a; uint trans_b;  // a is stored [k, m] / b is stored [n, k]
    uint accumulate;  // add to what out holds (a later slice of k)
} p;
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) buffer Out { float y[]; };

float a_at(uint row, uint kk) { return p.trans_a != 0 ? a[kk * p.m + row] : a[row * p.k + kk]; }
float b_at(uint kk, uint col) { return p.trans_b != 0 ? b[col * p.k + kk] : b[kk * p.n + col]; }

void main() {
    uint i = global_index();
    if (i >= p.m * p.n) return;
    uint row = i / p.n, col = i % p.n;
    vec4 acc = vec4(0.0);
    uint kk = p.k_begin;
    for (; kk + 4 <= p.k_end; kk += 4) {
        acc += vec4(a_at(row, kk), a_at(row, kk + 1), a_at(row, kk + 2), a_at(row, kk + 3))
             * vec4(b_at(kk, col), b_at(kk + 1, col), b_at(kk + 2, col), b_at(kk + 3, col));
    }
    float total = (acc.x + acc.y) + (acc.z + acc.w);
    for (; kk < p.k_end; ++kk) total += a_at(row, kk) * b_at(kk, col);
    y[i] = p.accumulate != 0 ? y[i] + total : total;
}
