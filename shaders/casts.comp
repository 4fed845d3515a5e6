#version 450
// 16-bit <-> float32, one invocation per 32-bit word of the 16-bit side (two elements):
//   MODE_WIDEN:  values[2w], values[2w + 1] = the two 16-bit elements of words[w]
//   MODE_NARROW: words[w] = the two elements values[2w], values[2w + 1], rounded to 16 bits (a missing second
//                element, past n, is stored as 0)
// Switches (STORAGE_F16 or STORAGE_BF16, one MODE_*), bindings (B_*) and the push block come from the kernel's
// declaration in vkloss/ops/casts.py.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "storage16.glsl"

layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

#if MODE_WIDEN
layout(set = 0, binding = B_WORDS) readonly buffer Words { uint words[]; };
layout(set = 0, binding = B_VALUES) writeonly buffer Values { float values[]; };
void main() {
    uint w = global_index();
    if (2u * w >= p.n) return;
    vec2 pair = unpack_pair16(words[w]);
    values[2u * w] = pair.x;
    if (2u * w + 1u < p.n) values[2u * w + 1u] = pair.y;
}
#elif MODE_NARROW
layout(set = 0, binding = B_VALUES) readonly buffer Values { float values[]; };
layout(set = 0, binding = B_WORDS) writeonly buffer Words { uint words[]; };
void main() {
    uint w = global_index();
    if (2u * w >= p.n) return;
    words[w] = pack_pair16(vec2(values[2u * w], 2u * w + 1u < p.n ? values[2u * w + 1u] : 0.0));
}
#else
#error "casts.comp: define MODE_WIDEN or MODE_NARROW"
#endif
