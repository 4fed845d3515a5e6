#version 450
// Cross-entropy's row kernels: each row's loss (and gradient) by one invocation or one workgroup. The maths, the
// options and the layer the kernels read and write through: include/cross_entropy.glsl. vkloss/ops/cross_entropy.py
// chooses and chains the modes:
//   MODE_ROW_WEIGHT: class indices only, one invocation per row: its w_target (0 if not counted) and whether its
//                 index is out of range, for the normalizer (and linear_cross_entropy's bad-input check).
//   MODE_SMALL:   one invocation per row, for rows of few classes: row loss and, with WRITE_GRAD, the gradient.
//   MODE_ROW:     one workgroup per row, for rows up to a few hundred thousand classes: the same, in two passes.
//   MODE_ROW_ONCE: one workgroup per row held in registers, read once (GPUs, rows up to 32,768 classes).
//   MODE_ROW_Z:   one workgroup per row: its z-loss alone, for return_z_loss (a pass of its own, only then).
// Longer rows go to the chunked kernels (cross_entropy_chunked.comp). Per-invocation loops stay short for any size,
// well under lavapipe's loop limit.
#extension GL_GOOGLE_include_directive : require
#include "cross_entropy.glsl"

#if MODE_ROW_WEIGHT
layout(set = 0, binding = B_ROW_WEIGHT) writeonly buffer RowWeight { float row_weight[]; };
void main() {
    uint row = global_index();
    if (row >= p.rows) return;
    RowTarget r = row_target(row);
    float w = 1.0;
#if WEIGHTED
    if (r.here) w = weight[r.index];
#endif
    row_weight[row] = r.here ? w : 0.0;  // a shard's row whose class is elsewhere: another rank counts it
    flag_bad(row, r);
}

#elif MODE_SMALL
// p.sum_rows (a single workgroup holds every row): the workgroup sums the rows' losses and bad flags itself, and
// writes the loss (times p.partial_scale) to row_loss[0] and the count to bad[0]; no tree sum follows.
#include "reduce.glsl"
void small_row(uint row, inout vec4 sums) {
    RowTarget r = row_target(row);
    uint base = row * p.classes;
    float m = NEG_INF;
    for (uint c = 0; c < p.classes; ++c) m = nan_max(m, capped(logit(base + c)));
    float sum_exp = 0.0, a_dot = 0.0, a_sum = 0.0;
    for (uint c = 0; c < p.classes; ++c) {
        float shifted = capped(logit(base + c)) - m;
        float a = coefficient(r, base + c, c);
        sum_exp += exp(shifted);
        a_dot += weighted_shift(a, shifted);
        a_sum += a;
    }
    float log_sum = log_accurate(sum_exp);
    float loss = (r.counted ? a_sum * log_sum - a_dot : 0.0) + z_loss(r.counted, m + log_sum);
    if (p.sum_rows != 0u) {
        sums = vec4(loss, row_is_bad(r) ? 1.0 : 0.0, 0.0, 0.0);
    } else {
        row_loss[row] = loss;
        flag_bad(row, r);
    }
#if WRITE_GRAD
    float scale = grad_scale();
    a_sum += z_coefficient(r.counted, m + log_sum);
    for (uint c = 0; c < p.classes; ++c) {
        float y = capped(logit(base + c));
        float softmax = exp(y - m - log_sum);
        float a = coefficient(r, base + c, c);
        float g[1] = float[1](r.counted ? (softmax * a_sum - a) * scale * cap_slope(y) : 0.0);
        store_grad(base + c, g);
    }
#endif
}

void main() {
    uint row = global_index();
    vec4 sums = vec4(0.0);
    if (row < p.rows) small_row(row, sums);
    if (p.sum_rows != 0u) {  // the same for every invocation: the barriers below are in uniform control flow
        sums = workgroup_sum4(sums);
        if (gl_LocalInvocationID.x == 0u) {
            row_loss[0] = sums.x * p.partial_scale;
#ifdef B_BAD
            bad[0] = sums.y;
#endif
        }
    }
}

#elif MODE_ROW
// One workgroup per row, two passes. First, each invocation keeps a running max of the logits it visits and rescales
// its sums whenever that max rises (rarely after the first iterations); the workgroup then re-bases every
// invocation's sums on the row max. Second, the gradient, the row still in cache.
// VEC4 (classes % 4 == 0): each invocation moves four contiguous classes at a time; WIDE (classes % 8 == 0, CPU
// devices): eight, two vec4s per access.
// A NaN logit needs no NaN-aware max: exp(NaN - m) makes the row's sum NaN, hence its loss and gradient, as in PyTorch.
#include "reduce.glsl"
#define ROW_UNROLL 4

// Access k of the row, at flat access index i of the matrix: its capped logits v and coefficients a.
void load_row(RowTarget r, uint i, uint k, out ELEMENT v[PER_LOAD], out ELEMENT a[PER_LOAD]) {
    load_logits(i, v);
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v[h] = capped(v[h]);
    coefficients(r, i, k, a);
}

// sum += term, with the low bits each addition drops kept in `lost` (Kahan's compensated sum): an invocation adds
// thousands of terms one after another, and with label smoothing a large one (the target's) and many tiny ones
// (every class's share) whose low bits a plain float32 sum loses, 2e-5 of the loss at 128,256 classes. `precise`:
// no compiler may reassociate it away. An infinite sum (a masked class with target mass: the loss is inf, as in
// PyTorch) keeps no low bits: inf - inf would make them NaN.
#define KAHAN_ADD(sum, lost, term) { precise float y_ = (term) - lost; precise float t_ = sum + y_; \
    lost = isinf(t_) ? 0.0 : (t_ - sum) - y_; sum = t_; }
// raise this invocation's running max to v_max, rescaling its sums
#define ROW_RAISE_MAX(v_max) { float raised = (v_max); if (raised > m_own) { s_own *= exp(m_own - raised); \
    KAHAN_ADD(a_own, a_lost, t_own == 0.0 ? 0.0 : -(t_own - t_lost) * (raised - m_own)) m_own = raised; } }
#define ROW_ACCUMULATE(v, a) { ELEMENT shifted = shift_from(v, m_own); s_own += HSUM(exp(shifted)); \
    KAHAN_ADD(a_own, a_lost, HSUM(weighted_shift(a, shifted))) KAHAN_ADD(t_own, t_lost, HSUM(a)) }
void main() {
    uint row = workgroup_index();
    if (row >= p.rows) return;  // uniform across the workgroup, so barriers stay valid
    RowTarget r = row_target(row);
    uint width = p.classes / ACCESS_WIDTH;  // accesses per row
    uint base = row * width;
    // this invocation's max, sum exp(p - max), sum a (p - max), sum a (the last two compensated: a_lost, t_lost)
    float m_own = NEG_INF, s_own = 0.0;
    precise float a_own = 0.0, t_own = 0.0, a_lost = 0.0, t_lost = 0.0;
    // ROW_UNROLL accesses are made before any value is used, so that many loads are in flight per invocation: a GPU
    // row kernel with few rows has few workgroups, and one load at a time leaves most of the memory bandwidth idle.
    uint k = gl_LocalInvocationID.x;
    for (; k + (ROW_UNROLL - 1) * WG < width; k += ROW_UNROLL * WG) {
        ELEMENT v[ROW_UNROLL][PER_LOAD], a[ROW_UNROLL][PER_LOAD];
        float v_max = NEG_INF;
        [[unroll]] for (uint j = 0; j < ROW_UNROLL; ++j) {
            load_row(r, base + k + j * WG, k + j * WG, v[j], a[j]);
            [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v_max = max(v_max, hmax(v[j][h]));
        }
        ROW_RAISE_MAX(v_max)
        [[unroll]] for (uint j = 0; j < ROW_UNROLL; ++j)
            [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) ROW_ACCUMULATE(v[j][h], a[j][h])
    }
    for (; k < width; k += WG) {
        ELEMENT v[PER_LOAD], a[PER_LOAD];
        load_row(r, base + k, k, v, a);
        float v_max = NEG_INF;
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v_max = max(v_max, hmax(v[h]));
        ROW_RAISE_MAX(v_max)
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) ROW_ACCUMULATE(v[h], a[h])
    }
    float m = workgroup_max(m_own);
    a_own -= a_lost;
    t_own -= t_lost;
    float rebase = t_own == 0.0 ? 0.0 : t_own * (m - m_own);
    vec4 sums = workgroup_sum4(vec4(s_own * exp(m_own - m), a_own - rebase, t_own, 0.0));
    float log_sum = log_accurate(sums.x);
    if (gl_LocalInvocationID.x == 0) {
        row_loss[row] = (r.counted ? sums.z * log_sum - sums.y : 0.0) + z_loss(r.counted, m + log_sum);
        flag_bad(row, r);
    }
#if WRITE_GRAD
    // grad = softmax * A * scale - a * scale, softmax = exp((p - m) - log_sum): never m + log_sum, which rounds
    // log_sum away where the logits are large (|m| ~ 3e4 has float32 spacing 0.002)
    float scale = r.counted ? grad_scale() : 0.0;
    float a_scale = (sums.z + z_coefficient(r.counted, m + log_sum)) * scale;
    for (uint k = gl_LocalInvocationID.x; k < width; k += WG) {
        ELEMENT v[PER_LOAD], a[PER_LOAD], g[PER_LOAD];
        load_row(r, base + k, k, v, a);
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h)
            g[h] = r.counted ? (exp((v[h] - m) - log_sum) * a_scale - a[h] * scale) * cap_slope(v[h]) : ELEMENT(0.0);
        store_grad(base + k, g);
    }
#endif
}

#elif MODE_ROW_ONCE
// One workgroup per row, the row held in registers: each invocation loads VALUES four-class vectors (a
// specialization constant) once, and the loss and the gradient both come from them, so every logit crosses memory
// once each way (Liger-Kernel's single-block rows). For rows up to WG * VALUES * 4 classes, on GPUs
// (vkloss/launch.py row_once chooses WG and VALUES; lavapipe runs large workgroups as coroutines, so it keeps
// MODE_ROW). NaN and masked logits behave as in MODE_ROW. Its reductions run within subgroups first.
#define SUBGROUP_REDUCE 1
#include "reduce.glsl"
layout(constant_id = 1) const uint VALUES = 8;
void main() {
    uint row = workgroup_index();
    if (row >= p.rows) return;  // uniform across the workgroup, so barriers stay valid
    RowTarget r = row_target(row);
    uint width = p.classes / 4;
    uint base = row * width;
    vec4 v[VALUES];
    float m_own = NEG_INF;
    [[unroll]] for (uint j = 0; j < VALUES; ++j) {
        uint k = gl_LocalInvocationID.x + j * WG;
        vec4 loaded[1] = vec4[1](vec4(NEG_INF));
        if (k < width) load_logits(base + k, loaded);
        v[j] = k < width ? capped(loaded[0]) : vec4(NEG_INF);
        m_own = max(m_own, hmax(v[j]));
    }
    float m = workgroup_max(m_own);
    float s_own = 0.0, a_own = 0.0, t_own = 0.0;  // sum exp(p - m), sum a (p - m), sum a
    [[unroll]] for (uint j = 0; j < VALUES; ++j) {
        uint k = gl_LocalInvocationID.x + j * WG;
        if (k < width) {
            vec4 a = coefficient(r, base + k, k), shifted = shift_from(v[j], m);
            s_own += HSUM(exp(shifted));
            a_own += HSUM(weighted_shift(a, shifted));
            t_own += HSUM(a);
        }
    }
    vec4 sums = workgroup_sum4(vec4(s_own, a_own, t_own, 0.0));
    float log_sum = log_accurate(sums.x);
    if (gl_LocalInvocationID.x == 0) {
        row_loss[row] = (r.counted ? sums.z * log_sum - sums.y : 0.0) + z_loss(r.counted, m + log_sum);
        flag_bad(row, r);
    }
#if WRITE_GRAD
    float scale = r.counted ? grad_scale() : 0.0;
    float a_scale = (sums.z + z_coefficient(r.counted, m + log_sum)) * scale;
    [[unroll]] for (uint j = 0; j < VALUES; ++j) {
        uint k = gl_LocalInvocationID.x + j * WG;
        if (k < width) {
            vec4 a = coefficient(r, base + k, k);
            vec4 g[1] = vec4[1](r.counted ? (exp((v[j] - m) - log_sum) * a_scale - a * scale) * cap_slope(v[j])
                                          : vec4(0.0));
            store_grad(base + k, g);
        }
    }
#endif
}

#elif MODE_ROW_Z
// One workgroup per row: the row's z-loss z_scale lse^2 alone (0 where the row does not count), for return_z_loss;
// the loss kernels add it to the row loss. A running max rescales the sum, as in MODE_ROW.
#include "reduce.glsl"
layout(set = 0, binding = B_ROW_Z) writeonly buffer RowZ { float row_z[]; };
void main() {
    uint row = workgroup_index();
    if (row >= p.rows) return;  // uniform across the workgroup, so barriers stay valid
    RowTarget r = row_target(row);
    uint base = row * p.classes;
    float m_own = NEG_INF, s_own = 0.0;
    for (uint c = gl_LocalInvocationID.x; c < p.classes; c += WG) {
        float v = capped(logit(base + c));
        if (v > m_own) {
            s_own *= exp(shift_from(m_own, v));
            m_own = v;
        }
        s_own += exp(shift_from(v, m_own));  // a NaN logit makes the sum NaN
    }
    float m = workgroup_max(m_own);
    float s = workgroup_sum4(vec4(m_own == NEG_INF ? 0.0 : s_own * exp(m_own - m), 0.0, 0.0, 0.0)).x;
    if (gl_LocalInvocationID.x == 0) row_z[row] = z_loss(r.counted, m + log_accurate(s));
}
#else
#error "cross_entropy_row.comp: define one of its MODE_*"
#endif
