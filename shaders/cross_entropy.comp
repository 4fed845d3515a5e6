#version 450
// Fused cross-entropy with probability targets: the loss and d(loss)/d(pred) for logits [rows, classes].
//   loss = mean_r ( T_r * lse_r - sum_c t_rc * p_rc ),  T_r = sum_c t_rc,  lse_r = log sum_c exp(p_rc)
//   grad = (softmax(p) * T_r - t) / rows
// Everything is computed relative to a row (or chunk) maximum m, so logits of any magnitude lose no precision.
// Modes (vkloss/ops/losses.py chooses and chains them):
//   MODE_SMALL:   one invocation per row, for rows of few classes: row loss and, with WRITE_GRAD, the gradient.
//   MODE_ROW:     one workgroup per row, for rows up to a few hundred thousand classes: the same, in two passes.
//   For longer rows, three kernels:
//   MODE_STATS:   one workgroup per (row, chunk of `chunk` classes): chunk max m, sum exp(p - m), sum t (p - m),
//                 sum t -> partials[4 per chunk].
//   MODE_COMBINE: one invocation per row: merge its chunks' partials -> row loss, and max, log-sum and T.
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

#elif MODE_ROW
// One workgroup per row, two passes. First, each invocation keeps a running max of the logits it visits and rescales
// its sums whenever that max rises (rarely after the first iterations); the workgroup then re-bases every
// invocation's sums on the row max. Second, the gradient, the row still in cache.
// VEC4 (classes % 4 == 0): each invocation moves four contiguous classes at a time.
// A NaN logit needs no NaN-aware max: exp(NaN - m) makes the row's sum NaN, hence its loss and gradient, as in PyTorch.
#include "reduce.glsl"
#if VEC4
#define ELEMENT vec4
#define HMAX(v) max(max(v.x, v.y), max(v.z, v.w))
#define HSUM(v) dot(v, vec4(1.0))
#else
#define ELEMENT float
#define HMAX(v) (v)
#define HSUM(v) (v)
#endif
layout(set = 0, binding = 0) readonly buffer Pred { ELEMENT pred[]; };
layout(set = 0, binding = 1) readonly buffer Target { ELEMENT target[]; };
layout(set = 0, binding = 2) writeonly buffer RowLoss { float row_loss[]; };
#if WRITE_GRAD
layout(set = 0, binding = 3) writeonly buffer Grad { ELEMENT grad[]; };
#endif
void main() {
    uint row = workgroup_index();
    if (row >= p.rows) return;  // uniform across the workgroup, so barriers stay valid
    uint width = p.classes / (VEC4 != 0 ? 4 : 1);
    uint begin = row * width + gl_LocalInvocationID.x, end = row * width + width;
    // this invocation's max, sum exp(p - max), sum t (p - max), sum t
    float m_own = NEG_INF, s_own = 0.0, a_own = 0.0, t_own = 0.0;
    for (uint i = begin; i < end; i += WG) {
        ELEMENT v = pred[i], t = target[i];
        float v_max = HMAX(v);
        if (v_max > m_own) {
            s_own *= exp(m_own - v_max);
            a_own -= t_own == 0.0 ? 0.0 : t_own * (v_max - m_own);
            m_own = v_max;
        }
        ELEMENT shifted = v - m_own;
        s_own += HSUM(exp(shifted));
        a_own += HSUM(t * shifted);
        t_own += HSUM(t);
    }
    float m = workgroup_max(m_own);
    float rebase = t_own == 0.0 ? 0.0 : t_own * (m - m_own);
    vec4 sums = workgroup_sum4(vec4(s_own * exp(m_own - m), a_own - rebase, t_own, 0.0));
    float log_sum = log(sums.x);
    if (gl_LocalInvocationID.x == 0) row_loss[row] = sums.z * log_sum - sums.y;
#if WRITE_GRAD
    // grad = softmax * T / rows - t / rows, softmax = exp((p - m) - log_sum): never m + log_sum, which rounds
    // log_sum away where the logits are large (|m| ~ 3e4 has float32 spacing 0.002)
    float t_scale = sums.z * p.inv_rows;
    for (uint i = begin; i < end; i += WG) grad[i] = exp((pred[i] - m) - log_sum) * t_scale - target[i] * p.inv_rows;
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
layout(set = 0, binding = 2) writeonly buffer RowStats { vec4 row_stats[]; };  // (max, log sum exp(p - max), T, -)
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
    row_stats[row] = vec4(m, log_sum, t_sum, 0.0);
}

#elif MODE_GRAD
layout(set = 0, binding = 0) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = 1) readonly buffer Target { float target[]; };
layout(set = 0, binding = 2) readonly buffer RowStats { vec4 row_stats[]; };
layout(set = 0, binding = 3) writeonly buffer Grad { float grad[]; };
void main() {
    uint i = global_index();
    if (i >= p.rows * p.classes) return;
    vec4 stats = row_stats[i / p.classes];
    grad[i] = (exp((pred[i] - stats.x) - stats.y) * stats.z - target[i]) * p.inv_rows;
}
#else
#error "cross_entropy.comp: define one MODE_*"
#endif
