#version 450
// Cross-entropy's chunked kernels, for rows longer than a workgroup takes at once (vkloss/ops/cross_entropy.py
// ROW_LIMIT) and for 16-bit logits whose rows are no multiple of four. Three kernels, chained:
//   MODE_STATS:   one workgroup per (row, chunk of `chunk` classes): chunk max m, sum exp(p - m), sum a (p - m),
//                 sum a -> partials[4 per chunk].
//   MODE_COMBINE: one invocation per row: merge its chunks' partials -> row loss, and max, log-sum and A.
//   MODE_GRAD:    one invocation per element (16-bit: per word): grad from row_stats. No loops.
// The maths, the options and the layer the kernels read and write through: include/cross_entropy.glsl.
#extension GL_GOOGLE_include_directive : require
#include "cross_entropy.glsl"

#if MODE_STATS
#include "reduce.glsl"
layout(set = 0, binding = B_PARTIALS) writeonly buffer Partials { vec4 partials[]; };
void main() {
    uint w = workgroup_index();
    if (w >= p.rows * p.chunks) return;  // uniform across the workgroup, so barriers stay valid
    uint row = w / p.chunks;
    RowTarget r = row_target(row);
    uint first = (w % p.chunks) * p.chunk, last = min(first + p.chunk, p.classes);
    uint base = row * p.classes;
    float m = NEG_INF;
    for (uint c = first + gl_LocalInvocationID.x; c < last; c += WG) m = nan_max(m, capped(logit(base + c)));
    m = workgroup_max(m);
    vec4 sums = vec4(0.0);  // sum exp(p - m), sum a (p - m), sum a
    for (uint c = first + gl_LocalInvocationID.x; c < last; c += WG) {
        float shifted = shift_from(capped(logit(base + c)), m);
        float a = coefficient(r, base + c, c);
        sums += vec4(exp(shifted), weighted_shift(a, shifted), a, 0.0);
    }
    sums = workgroup_sum4(sums);
    if (gl_LocalInvocationID.x == 0) partials[w] = vec4(m, sums.x, sums.y, sums.z);
}

#elif MODE_COMBINE
layout(set = 0, binding = B_PARTIALS) readonly buffer Partials { vec4 partials[]; };
layout(set = 0, binding = B_ROW_STATS) writeonly buffer RowStats { vec4 row_stats[]; };  // (max, log sum, A, -)
void main() {
    uint row = global_index();
    if (row >= p.rows) return;
    RowTarget r = row_target(row);
    uint base = row * p.chunks;
    float m = NEG_INF;
    for (uint k = 0; k < p.chunks; ++k) m = nan_max(m, partials[base + k].x);
    float sum_exp = 0.0, a_dot = 0.0, a_sum = 0.0;
    for (uint k = 0; k < p.chunks; ++k) {
        vec4 part = partials[base + k];  // (chunk max, sum exp(p - max), sum a (p - max), sum a)
        sum_exp += part.y * exp(part.x - m);
        a_dot += part.z - weighted_shift(part.w, m - part.x);  // re-based from the chunk's max to the row's
        a_sum += part.w;
    }
    float log_sum = log_accurate(sum_exp);
    row_loss[row] = (r.counted ? a_sum * log_sum - a_dot : 0.0) + z_loss(r.counted, m + log_sum);
    row_stats[row] = vec4(m, log_sum, a_sum + z_coefficient(r.counted, m + log_sum), 0.0);
    flag_bad(row, r);
}

#elif MODE_GRAD
layout(set = 0, binding = B_ROW_STATS) readonly buffer RowStats { vec4 row_stats[]; };
float grad_at(uint i) {
    uint row = i / p.classes;
    RowTarget r = row_target(row);
    vec4 stats = row_stats[row];
    float scale = r.counted ? grad_scale() : 0.0;
    float a = coefficient(r, i, i - row * p.classes);
    float y = capped(logit(i));
    return r.counted ? (exp((y - stats.x) - stats.y) * stats.z - a) * scale * cap_slope(y) : 0.0;
}

void main() {
    uint n = p.rows * p.classes;
#if PACKED16
    uint w = global_index();  // one word, two elements (possibly of two rows)
    if (2u * w >= n) return;
    store_grad_word(w, vec2(grad_at(2u * w), 2u * w + 1u < n ? grad_at(2u * w + 1u) : 0.0));
#else
    uint i = global_index();
    if (i >= n) return;
    float g[1] = float[1](grad_at(i));
    store_grad(i, g);
#endif
}
#else
#error "cross_entropy_chunked.comp: define one of its MODE_*"
#endif
