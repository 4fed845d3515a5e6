#version 450
// Baselines for `python -m vkloss.tools bench`, not ops:
//   MODE_COPY: dst = src, the device's streaming bandwidth for the roofline ratio.
//   The rest: cross-entropy and BCE as a user without vkloss would write them, one kernel per step, each reading
//   its inputs from memory again (row max, row sum of exp, row dot with the target, row loss, gradient).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"

// Switches, bindings (B_*) and the push block come from the kernel's declaration in vkloss/tools/bench.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

#if MODE_COPY
// One access per invocation (access.glsl): VEC4, four floats (p.rows counts accesses); WIDE, eight in a u64vec4
// (CPU devices). The bench takes the fastest.
#include "access.glsl"
layout(set = 0, binding = B_SRC) readonly buffer Src { STORED src[]; };
layout(set = 0, binding = B_DST) writeonly buffer Dst { STORED dst[]; };
void main() {
    uint i = global_index();
    if (i < p.rows) dst[i] = src[i];
}

#elif MODE_ROW_MAX || MODE_ROW_SUMEXP || MODE_ROW_TDOT
// one workgroup per row
#include "reduce.glsl"
layout(set = 0, binding = B_PRED) readonly buffer Pred { float pred[]; };
#if MODE_ROW_MAX
layout(set = 0, binding = B_ROW_MAX) writeonly buffer Out { float row_max[]; };
#elif MODE_ROW_SUMEXP
layout(set = 0, binding = B_ROW_MAX) readonly buffer RowMax { float row_max[]; };
layout(set = 0, binding = B_ROW_SUM) writeonly buffer Out { float row_sum[]; };
#else
layout(set = 0, binding = B_TARGET) readonly buffer Target { float target[]; };
layout(set = 0, binding = B_ROW_TDOT) writeonly buffer Out { vec2 row_tdot[]; };  // (sum t p, sum t)
#endif
void main() {
    uint row = workgroup_index();
    if (row >= p.rows) return;
    uint base = row * p.classes;
#if MODE_ROW_MAX
    float m = NEG_INF;
    for (uint c = gl_LocalInvocationID.x; c < p.classes; c += WG) m = nan_max(m, pred[base + c]);
    m = workgroup_max(m);
    if (gl_LocalInvocationID.x == 0) row_max[row] = m;
#elif MODE_ROW_SUMEXP
    float s = 0.0;
    for (uint c = gl_LocalInvocationID.x; c < p.classes; c += WG) s += exp(pred[base + c] - row_max[row]);
    s = workgroup_sum(s);
    if (gl_LocalInvocationID.x == 0) row_sum[row] = s;
#else
    vec4 s = vec4(0.0);
    for (uint c = gl_LocalInvocationID.x; c < p.classes; c += WG) s.xy += vec2(target[base + c] * pred[base + c], target[base + c]);
    s = workgroup_sum4(s);
    if (gl_LocalInvocationID.x == 0) row_tdot[row] = s.xy;
#endif
}

#elif MODE_ROW_LOSS
layout(set = 0, binding = B_ROW_MAX) readonly buffer RowMax { float row_max[]; };
layout(set = 0, binding = B_ROW_SUM) readonly buffer RowSum { float row_sum[]; };
layout(set = 0, binding = B_ROW_TDOT) readonly buffer RowTdot { vec2 row_tdot[]; };
layout(set = 0, binding = B_ROW_LOSS) writeonly buffer RowLoss { float row_loss[]; };
void main() {
    uint row = global_index();
    if (row < p.rows) row_loss[row] = row_tdot[row].y * (row_max[row] + log(row_sum[row])) - row_tdot[row].x;
}

#elif MODE_CE_GRAD
layout(set = 0, binding = B_PRED) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = B_TARGET) readonly buffer Target { float target[]; };
layout(set = 0, binding = B_ROW_MAX) readonly buffer RowMax { float row_max[]; };
layout(set = 0, binding = B_ROW_SUM) readonly buffer RowSum { float row_sum[]; };
layout(set = 0, binding = B_ROW_TDOT) readonly buffer RowTdot { vec2 row_tdot[]; };
layout(set = 0, binding = B_GRAD) writeonly buffer Grad { float grad[]; };
void main() {
    uint i = global_index();
    if (i >= p.rows * p.classes) return;
    uint row = i / p.classes;
    grad[i] = (exp(pred[i] - row_max[row]) / row_sum[row] * row_tdot[row].y - target[i]) * p.inv_rows;
}

#elif MODE_BCE_TERMS || MODE_BCE_GRAD
layout(set = 0, binding = B_PRED) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = B_LABELS) readonly buffer Labels { float labels[]; };
layout(set = 0, binding = B_RESULT) writeonly buffer Out { float result[]; };
void main() {
    uint i = global_index();
    if (i >= p.rows) return;
    float x = pred[i], y = labels[i];
#if MODE_BCE_TERMS
    result[i] = -(y * max(log(x), -100.0) + (1.0 - y) * max(log(1.0 - x), -100.0));
#else
    result[i] = (x - y) / max(x * (1.0 - x), 1e-12) * p.inv_rows;
#endif
}
#else
#error "bench.comp: define one MODE_*"
#endif
