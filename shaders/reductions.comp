#version 450
// Reductions to one value, and their broadcast back. Both move ACCESS_WIDTH floats an access (access.glsl); n counts
// accesses.
// MODE_SUM: one pass of a tree sum: workgroup w writes the sum of accesses [w*ITEMS*WG, (w+1)*ITEMS*WG) of src times
//   `scale` to out[w]. Each invocation first sums its ITEMS accesses as a pairwise tree in registers (an access's two
//   vec4s first, with WIDE), then the components, then the workgroup's tree: pairwise all the way, and few barriers
//   per element. The engine chains passes (n -> n / (ITEMS WG ACCESS_WIDTH) -> ... -> 1) with a barrier between
//   them; the last pass scales by 1/N.
//   COUNT_NONFINITE: the first pass counts NaN and infinite values instead of summing (Graph(check_finite=True)).
//   DIVIDE: the last pass divides by norm[0], a device-computed divisor (a weighted mean's summed weight): 0 gives
//   NaN or +-inf, as the division does in PyTorch.
// MODE_FILL: out[i] = in[0] * scale (the backward of mean_all: each element gets grad / N).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "access.glsl"

// Switches, bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/reductions.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

#if MODE_SUM
#include "reduce.glsl"
#if ITEMS != 16
#error "reductions.comp: SUM16 below sums ITEMS = 16 accesses (vkloss/ops/reductions.py passes ITEMS)"
#endif
layout(set = 0, binding = B_SRC) readonly buffer In { STORED src[]; };
layout(set = 0, binding = B_DST) writeonly buffer Out { float dst[]; };
#if DIVIDE
layout(set = 0, binding = B_NORM) readonly buffer Norm { float norm[]; };
#endif

// Access i of src, its PER_LOAD ELEMENTs added (or with COUNT_NONFINITE, its NaN and infinite values counted); 0 past n.
ELEMENT access_sum(uint i) {
    if (i >= p.n) return ELEMENT(0.0);
    ELEMENT parts[PER_LOAD];
    LOAD_SPLIT(src, i, parts);
#if COUNT_NONFINITE
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) parts[h] = ELEMENT(isnan(parts[h])) + ELEMENT(isinf(parts[h]));
#endif
#if WIDE
    return parts[0] + parts[1];
#else
    return parts[0];
#endif
}

// The pairwise tree of an invocation's ITEMS accesses (i, i + WG, ..., i + 15 WG), written out: no array and no
// loop. lavapipe (Mesa 22) kept an array summed by a halving loop (stride >>= 1) in per-lane scratch memory, several
// times slower than this (docs/performance.md, "Kernel choices").
#define SUM2(i) (access_sum(i) + access_sum((i) + WG))
#define SUM4(i) (SUM2(i) + SUM2((i) + 2u * WG))
#define SUM8(i) (SUM4(i) + SUM4((i) + 4u * WG))
#define SUM16(i) (SUM8(i) + SUM8((i) + 8u * WG))

void main() {
    uint w = workgroup_index();
    float total = workgroup_sum(HSUM(SUM16(w * ITEMS * WG + gl_LocalInvocationID.x)));
#if DIVIDE
    total /= norm[0];
#endif
    if (gl_LocalInvocationID.x == 0) dst[w] = total * p.scale;
}
#elif MODE_FILL
layout(set = 0, binding = B_SRC) readonly buffer In { float src[]; };
layout(set = 0, binding = B_DST) writeonly buffer Out { STORED dst[]; };

void main() {
    uint i = global_index();
    if (i >= p.n) return;
    ELEMENT parts[PER_LOAD];
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) parts[h] = ELEMENT(src[0] * p.scale);
    STORE_JOINED(dst, i, parts);
}
#else
#error "reductions.comp: define MODE_SUM or MODE_FILL"
#endif
