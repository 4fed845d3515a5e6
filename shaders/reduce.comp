#version 450
// Reductions to one value, and their broadcast back.
// MODE_SUM: one pass of a tree sum: workgroup w writes the sum of in[w*2*WG .. (w+1)*2*WG) times `scale` to out[w].
//   The engine chains passes (n -> n/512 -> ... -> 1) with a barrier between them; the last pass scales by 1/N.
// MODE_FILL: out[i] = in[0] * scale (the backward of mean_all: each element gets grad / N).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(push_constant) uniform Push { uint n; float scale; } p;
layout(set = 0, binding = 0) readonly buffer In { float src[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float dst[]; };

#if MODE_SUM
#include "reduce.glsl"
void main() {
    uint w = workgroup_index();
    uint i = w * 2 * WG + gl_LocalInvocationID.x;
    float v = (i < p.n ? src[i] : 0.0) + (i + WG < p.n ? src[i + WG] : 0.0);
    float total = workgroup_sum(v);
    if (gl_LocalInvocationID.x == 0) dst[w] = total * p.scale;
}
#elif MODE_FILL
void main() {
    uint i = global_index();
    if (i < p.n) dst[i] = src[0] * p.scale;
}
#else
#error "reduce.comp: define MODE_SUM or MODE_FILL"
#endif
