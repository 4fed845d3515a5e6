#version 450
// Fused binary cross-entropy, PyTorch's F.binary_cross_entropy: per element
//   loss = -(y log p + (1 - y) log(1 - p)), each log clamped at -100
//   grad = (p - y) / max(p (1 - p), 1e-12) / n
// One pass: each workgroup reads its ITEMS * WG elements once, writes their gradient (WRITE_GRAD), the sum of their
// loss terms to loss_partials[w], and how many of its p or y lie outside [0, 1] (NaN counts as outside) to
// bad_partials[w]. The engine then tree-sums both. Loops: ITEMS iterations per invocation.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"
#include "reduce.glsl"

#define ITEMS 8
layout(push_constant) uniform Push { uint n; float inv_n; } p;
layout(set = 0, binding = 0) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = 1) readonly buffer Labels { float labels[]; };
layout(set = 0, binding = 2) writeonly buffer LossPartials { float loss_partials[]; };
layout(set = 0, binding = 3) writeonly buffer BadPartials { float bad_partials[]; };
#if WRITE_GRAD
layout(set = 0, binding = 4) writeonly buffer Grad { float grad[]; };
#endif

bool in_unit_interval(float v) { return v >= 0.0 && v <= 1.0; }

void main() {
    uint w = workgroup_index();
    uint begin = w * WG * ITEMS + gl_LocalInvocationID.x;
    float loss = 0.0, bad = 0.0;
    [[unroll]] for (uint k = 0; k < ITEMS; ++k) {
        uint i = begin + k * WG;
        if (i < p.n) {
            float x = pred[i], y = labels[i];
            bad += (in_unit_interval(x) ? 0.0 : 1.0) + (in_unit_interval(y) ? 0.0 : 1.0);
            float log_p = max(log(x), -100.0);
            float log_1mp = max(log1p_accurate(-x), -100.0);
            loss -= y * log_p + (1.0 - y) * log_1mp;
#if WRITE_GRAD
            grad[i] = (x - y) / max(x * (1.0 - x), 1e-12) * p.inv_n;
#endif
        }
    }
    vec4 sums = workgroup_sum4(vec4(loss, bad, 0.0, 0.0));
    if (gl_LocalInvocationID.x == 0) {
        loss_partials[w] = sums.x;
        bad_partials[w] = sums.y;
    }
}
