#version 450
// Work along one axis of a tensor viewed as [outer, size, inner] (the axis in the middle):
//   MODE_SUM:       out[o, i] (+)= scale * sum over d of x[o, d, i], for d in [d_begin, d_end): one invocation per
//                   output element, its running sum compensated (Kahan); the caller splits a long axis into
//                   slices (lavapipe's loop limit), each added to the last.
//   MODE_BROADCAST: out[o, d, i] = scale * x[o, i]: one invocation per output element (the backward of a sum).
//   MODE_TRANSPOSE: a tensor viewed as [outer, size, middle, size2, inner] with its two sized axes swapped: out is
//                   [outer, size2, middle, size, inner]. One invocation per output element.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Switches, bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/axes.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
layout(set = 0, binding = B_X) readonly buffer X { float x[]; };
layout(set = 0, binding = B_Y) buffer Y { float y[]; };

void main() {
    uint i = global_index();
#if MODE_SUM
    if (i >= p.outer * p.inner) return;
    uint o = i / p.inner, in_ = i - o * p.inner;
    uint base = o * p.size * p.inner + in_;
    precise float sum = 0.0, lost = 0.0;
    for (uint d = p.d_begin; d < p.d_end; ++d) {
        precise float term = x[base + d * p.inner] - lost;
        precise float next = sum + term;
        lost = isinf(next) ? 0.0 : (next - sum) - term;
        sum = next;
    }
    float value = (sum - lost) * p.scale;
    y[i] = p.accumulate != 0u ? y[i] + value : value;
#elif MODE_BROADCAST
    if (i >= p.outer * p.size * p.inner) return;
    uint o = i / (p.size * p.inner), in_ = i % p.inner;
    y[i] = x[o * p.inner + in_] * p.scale;
#elif MODE_TRANSPOSE
    if (i >= p.outer * p.size * p.middle * p.size2 * p.inner) return;
    // out index (o, b, m, a, c) over [outer, size2, middle, size, inner]
    uint c = i % p.inner, rest = i / p.inner;
    uint a = rest % p.size;
    rest /= p.size;
    uint m = rest % p.middle;
    rest /= p.middle;
    uint b = rest % p.size2, o = rest / p.size2;
    y[i] = x[(((o * p.size + a) * p.middle + m) * p.size2 + b) * p.inner + c];
#else
#error "axes.comp: define MODE_SUM, MODE_BROADCAST or MODE_TRANSPOSE"
#endif
}
