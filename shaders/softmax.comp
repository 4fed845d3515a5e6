#version 450
// Softmax and log-softmax along one axis, a tensor viewed as [outer, size, inner]: one workgroup per row (o, i),
// its `size` elements `inner` apart.
//   MODE_FORWARD:  y = exp(x - m - log s) (LOG: (x - m) - log s), m the row's max, s = sum exp(x - m); one pass keeps
//                  a running max and rescales its sum, the workgroup combines them, a second pass writes y.
//   MODE_BACKWARD: from the forward's output y and the upstream gradient g: dx = y (g - sum g y) (LOG:
//                  dx = g - exp(y) sum g); one pass for the sum, one to write.
// A masked element (-inf) gets 0 (LOG: -inf); a row of nothing but -inf gives NaN, as PyTorch's.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"
#include "reduce.glsl"

// Switches, bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/softmax.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
#if MODE_FORWARD
layout(set = 0, binding = B_X) readonly buffer X { float x[]; };
layout(set = 0, binding = B_Y) writeonly buffer Y { float y[]; };
#else
layout(set = 0, binding = B_GRAD) readonly buffer Grad { float grad[]; };
layout(set = 0, binding = B_Y) readonly buffer Y { float y[]; };
layout(set = 0, binding = B_DX) writeonly buffer Dx { float dx[]; };
#endif

void main() {
    uint row = workgroup_index();
    if (row >= p.outer * p.inner) return;  // uniform across the workgroup, so barriers stay valid
    uint o = row / p.inner;
    uint base = o * p.size * p.inner + (row - o * p.inner);
#if MODE_FORWARD
    float m_own = NEG_INF, s_own = 0.0, nans = 0.0;
    for (uint d = gl_LocalInvocationID.x; d < p.size; d += WG) {
        float v = x[base + d * p.inner];
        if (isnan(v)) {
            nans += 1.0;  // a NaN makes the whole row NaN, as in PyTorch
            continue;
        }
        if (v > m_own) {
            s_own *= exp(shift_from(m_own, v));
            m_own = v;
        }
        s_own += exp(shift_from(v, m_own));
    }
    float m = workgroup_max(m_own);
    vec4 sums = workgroup_sum4(vec4(m_own == NEG_INF ? 0.0 : s_own * exp(m_own - m), nans, 0.0, 0.0));
    float log_s = sums.y > 0.0 ? uintBitsToFloat(0x7fc00000u) : log_accurate(sums.x);
    for (uint d = gl_LocalInvocationID.x; d < p.size; d += WG) {
        float shifted = (x[base + d * p.inner] - m) - log_s;
#if LOG
        y[base + d * p.inner] = shifted;
#else
        y[base + d * p.inner] = exp(shifted);
#endif
    }
#else
    // the sum of terms of both signs, compensated (Kahan): long rows would lose digits to cancellation
    precise float part = 0.0, lost = 0.0;
    for (uint d = gl_LocalInvocationID.x; d < p.size; d += WG) {
#if LOG
        precise float term = grad[base + d * p.inner] - lost;
#else
        precise float term = grad[base + d * p.inner] * y[base + d * p.inner] - lost;
#endif
        precise float next = part + term;
        lost = isinf(next) ? 0.0 : (next - part) - term;
        part = next;
    }
    float total = workgroup_sum(part - lost);
    for (uint d = gl_LocalInvocationID.x; d < p.size; d += WG) {
        uint at = base + d * p.inner;
#if LOG
        dx[at] = grad[at] - exp(y[at]) * total;
#else
        dx[at] = y[at] * (grad[at] - total);
#endif
    }
#endif
}
