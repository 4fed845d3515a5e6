#version 450
// Fused binary cross-entropy, PyTorch's F.binary_cross_entropy: per element
//   loss = -(y log p + (1 - y) log(1 - p)), each log clamped at -100
//   grad = (p - y) / max(p (1 - p), 1e-12) / n
// One pass: workgroup w reads its range of `per_workgroup` elements once, writes their gradient (WRITE_GRAD), the sum
// of their loss terms to loss_partials[w], and how many of its p or y lie outside [0, 1] (NaN counts as outside) to
// bad_partials[w]. The engine then tree-sums both. VEC4 (n % 4 == 0): four elements at a time.
// Loops: per_workgroup / WG (/ 4) iterations per invocation, kept small by the caller.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"
#include "reduce.glsl"

#if VEC4
#define ELEMENT vec4
#define HSUM(v) dot(v, vec4(1.0))
// NaN compares false, so it counts as outside
#define COUNT_OUTSIDE(v) (4.0 - dot(vec4(greaterThanEqual(v, vec4(0.0))) * vec4(lessThanEqual(v, vec4(1.0))), vec4(1.0)))
#else
#define ELEMENT float
#define HSUM(v) (v)
#define COUNT_OUTSIDE(v) ((v) >= 0.0 && (v) <= 1.0 ? 0.0 : 1.0)
#endif

layout(push_constant) uniform Push { uint n; float inv_n; uint per_workgroup; } p;
layout(set = 0, binding = 0) readonly buffer Pred { ELEMENT pred[]; };
layout(set = 0, binding = 1) readonly buffer Labels { ELEMENT labels[]; };
layout(set = 0, binding = 2) writeonly buffer LossPartials { float loss_partials[]; };
layout(set = 0, binding = 3) writeonly buffer BadPartials { float bad_partials[]; };
#if WRITE_GRAD
layout(set = 0, binding = 4) writeonly buffer Grad { ELEMENT grad[]; };
#endif

void main() {
    uint w = workgroup_index();
    uint width = VEC4 != 0 ? 4 : 1;
    uint begin = w * (p.per_workgroup / width), end = min(begin + p.per_workgroup / width, p.n / width);
    ELEMENT loss = ELEMENT(0.0);
    float bad = 0.0;  // COUNT_OUTSIDE already sums the components
    for (uint i = begin + gl_LocalInvocationID.x; i < end; i += WG) {
        ELEMENT x = pred[i], y = labels[i];
        bad += COUNT_OUTSIDE(x) + COUNT_OUTSIDE(y);
        ELEMENT log_p = max(log(x), ELEMENT(-100.0));
        ELEMENT log_1mp = max(log1p_accurate(-x), ELEMENT(-100.0));
        loss -= y * log_p + (1.0 - y) * log_1mp;
#if WRITE_GRAD
        grad[i] = (x - y) / max(x * (1.0 - x), ELEMENT(1e-12)) * p.inv_n;
#endif
    }
    vec4 sums = workgroup_sum4(vec4(HSUM(loss), bad, 0.0, 0.0));
    if (gl_LocalInvocationID.x == 0) {
        loss_partials[w] = sums.x;
        bad_partials[w] = sums.y;
    }
}
