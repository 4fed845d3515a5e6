#version 450
// Reductions to one value, and their broadcast back.
// MODE_SUM: one pass of a tree sum: workgroup w writes the sum of in[w*ITEMS*WG .. (w+1)*ITEMS*WG) times `scale` to
//   out[w]. Each invocation first sums its ITEMS values as a pairwise tree in registers, then the workgroup's tree:
//   pairwise all the way, and few barriers per element.
//   The engine chains passes (n -> n/512 -> ... -> 1) with a barrier between them; the last pass scales by 1/N.
//   COUNT_NONFINITE: the first pass counts NaN and infinite values instead of summing (Graph(check_finite=True)).
// MODE_FILL: out[i] = in[0] * scale (the backward of mean_all: each element gets grad / N).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/reductions.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
layout(set = 0, binding = B_SRC) readonly buffer In { float src[]; };
layout(set = 0, binding = B_DST) writeonly buffer Out { float dst[]; };

#if MODE_SUM
#include "reduce.glsl"
#ifndef ITEMS
#error "reductions.comp: MODE_SUM needs ITEMS, the values one invocation sums (vkloss/ops/reductions.py passes it)"
#endif
void main() {
    uint w = workgroup_index();
    uint first = w * ITEMS * WG + gl_LocalInvocationID.x;
    float v[ITEMS];
    [[unroll]] for (uint k = 0; k < ITEMS; ++k) {
        uint i = first + k * WG;
#if COUNT_NONFINITE
        v[k] = i < p.n && (isnan(src[i]) || isinf(src[i])) ? 1.0 : 0.0;
#else
        v[k] = i < p.n ? src[i] : 0.0;
#endif
    }
    [[unroll]] for (uint stride = ITEMS / 2; stride > 0; stride >>= 1) {
        [[unroll]] for (uint k = 0; k < stride; ++k) v[k] += v[k + stride];
    }
    float total = workgroup_sum(v[0]);
    if (gl_LocalInvocationID.x == 0) dst[w] = total * p.scale;
}
#elif MODE_FILL
void main() {
    uint i = global_index();
    if (i < p.n) dst[i] = src[0] * p.scale;
}
#else
#error "reductions.comp: define MODE_SUM or MODE_FILL"
#endif
