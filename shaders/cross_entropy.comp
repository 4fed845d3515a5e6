#version 450
// Fused cross-entropy with probability targets: the loss and d(loss)/d(pred) for logits [rows, classes].
//   loss = mean_r ( T_r * lse_r - sum_c t_rc * p_rc ),  T_r = sum_c t_rc,  lse_r = log sum_c exp(p_rc)
//   grad = (softmax(p) * T_r - t) / rows
// Everything is computed relative to a row (or chunk) maximum m, so logits of any magnitude lose no precision.
// Modes (vkloss/ops/losses.py chains them):
//   MODE_SMALL:   one invocation per row, for rows of few classes: row loss and, with WRITE_GRAD, the gradient.
//   MODE_STATS:   one workgroup per (row, chunk of `chunk` classes): chunk max m, sum exp(p - m), sum t (p - m),
//                 sum t -> partials[4 per chunk].
//   MODE_COMBINE: one invocation per row: merge its chunks' partials -> row loss, lse and T (rowstats).
//   MODE_GRAD:    one invocation per element: grad from rowstats. No loops.
// Per-invocation loops stay short for any size (chunk / WG and chunks per row), well under lavapipe's limit.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"

layout(push_constant) uniform Push { uint rows; uint classes; uint chunks; uint chunk; float inv_rows; } p;

#if MODE_SMALL
layout(set = 0, binding = 0) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = 1) readonly buffer Target { float target[]; };
layout(set = 0, binding = 2) writeonly buffer RowLoss { float row_loss[]; };
#if WRITE_GRAD
layout(set = 0, binding = 3) writeonly buffer Grad { float grad[]; };
#endif
void main() {
    uint row = global_index();
    if (row >= p.rows) return;
    uint base = row * p.classes;
    float m = NEG_INF;
    for (uint c = 0; c < p.classes; ++c) m = nan_max(m, pred[base + c]);
    float sum_exp = 0.0, t_dot = 0.0, t_sum = 0.0;
    for (uint c = 0; c < p.classes; ++c) {
        float shifted = pred[base + c] - m;
        float t = target[base + c];
        sum_exp += exp(shifted);
        t_dot += t * shifted;
        t_sum += t;
    }
    float log_sum = log(sum_exp);
    row_loss[row] = t_sum * log_sum - t_dot;
#if WRITE_GRAD
    for (uint c = 0; c < p.classes; ++c) {
        float softmax = exp(pred[base + c] - m - log_sum);
        grad[base + c] = (softmax * t_sum - target[base + c]) * p.inv_rows;
    }
#endif
}

#elif MODE_STATS
#include "reduce.glsl"
layout(set = 0, binding = 0) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = 1) readonly buffer Target { float target[]; };
layout(set = 0, binding = 2) writeonly buffer Partials { vec4 partials[]; };
void main() {
    uint w = workgroup_index();
    if (w >= p.rows * p.chunks) return;  // uniform across the workgroup, so barriers stay valid
    uint row = w / p.chunks;
    uint begin = row * p.classes + (w % p.chunks) * p.chunk;
    uint end = row * p.classes + min((w % p.chunks + 1) * p.chunk, p.classes);
    float m = NEG_INF;
    for (uint i = begin + gl_LocalInvocationID.x; i < end; i += WG) m = nan_max(m, pred[i]);
    m = workgroup_max(m);
    vec4 sums = vec4(0.0);  // sum exp(p - m), sum t (p - m), sum t
    for (uint i = begin + gl_LocalInvocationID.x; i < end; i += WG) {
        float shifted = pred[i] - m;
        float t = target[i];
        sums += vec4(exp(shifted), t * shifted, t, 0.0);
    }
    sums = workgroup_sum4(sums);
    if (gl_LocalInvocationID.x == 0) partials[w] = vec4(m, sums.x, sums.y, sums.z);
}

#elif MODE_COMBINE
layout(set = 0, binding = 0) readonly buffer Partials { vec4 partials[]; };
layout(set = 0, binding = 1) writeonly buffer RowLoss { float row_loss[]; };
layout(set = 0, binding = 2) writeonly buffer RowStats { vec2 row_stats[]; };  // (lse, T)
void main() {
    uint row = global_index();
    if (row >= p.rows) return;
    uint base = row * p.chunks;
    float m = NEG_INF;
    for (uint k = 0; k < p.chunks; ++k) m = nan_max(m, partials[base + k].x);
    float sum_exp = 0.0, t_dot = 0.0, t_sum = 0.0;
    for (uint k = 0; k < p.chunks; ++k) {
        vec4 part = partials[base + k];  // (chunk max, sum exp(p - max), sum t (p - max), sum t)
        sum_exp += part.y * exp(part.x - m);
        t_dot += part.z - part.w * (m - part.x);  // re-based from the chunk's max to the row's
        t_sum += part.w;
    }
    float log_sum = log(sum_exp);
    row_loss[row] = t_sum * log_sum - t_dot;
    row_stats[row] = vec2(m + log_sum, t_sum);
}

#elif MODE_GRAD
layout(set = 0, binding = 0) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = 1) readonly buffer Target { float target[]; };
layout(set = 0, binding = 2) readonly buffer RowStats { vec2 row_stats[]; };
layout(set = 0, binding = 3) writeonly buffer Grad { float grad[]; };
void main() {
    uint i = global_index();
    if (i >= p.rows * p.classes) return;
    vec2 stats = row_stats[i / p.classes];
    grad[i] = (exp(pred[i] - stats.x) * stats.y - target[i]) * p.inv_rows;
}
#else
#error "cross_entropy.comp: define one MODE_*"
#endif
