#version 450
// Fused cross-entropy: the loss and d(loss)/d(pred) for logits p [rows, classes], PyTorch's F.cross_entropy.
// Every option is a per-class coefficient a_rc of the row's loss, so one set of kernels serves them all:
//   loss_r = sum_c a_rc (lse_r - p_rc) = A_r lse_r - sum_c a_rc p_rc,   A_r = sum_c a_rc,  lse_r = log sum_c exp(p_rc)
//   grad   = (softmax(p) A_r - a) * scale
//   a_rc   = w_c (t_rc (1 - smoothing) + smoothing / classes)
// t is the target row (probabilities) or, with TARGET_INDEX, the one-hot row of the class index target_index[r],
// read directly (no one-hot matrix); a row whose index is ignore_index (or out of range: counted by MODE_ROW_WEIGHT
// and reported) has a = 0 and contributes neither loss nor gradient. w (WEIGHTED) are class weights, else 1.
// scale is the push constant `scale` (1/rows for a mean, 1 for a sum or no reduction), or with NORM_BUFFER 1 / the
// device-computed sum of the counted rows' w_target (PyTorch's weighted mean over index targets), which divides the
// summed row losses afterwards (reductions.comp DIVIDE). A zero sum gives what PyTorch's division gives: a NaN or
// +-inf loss, and a gradient that is NaN or +-inf in every counted row (which of the two where may differ).
// Everything is computed relative to a row (or chunk) maximum m, so logits of any magnitude lose no precision.
// Masked logits (-inf) are 0 after exp and add nothing where a is 0 (weighted_shift), also when a whole invocation's
// share or chunk is masked (shift_from), so a masked row stays finite as in PyTorch; a row of nothing but -inf gives
// NaN, as PyTorch's does. A normalizer (NORM_BUFFER) may be negative (negative class weights), as in PyTorch.
// Modes (vkloss/ops/losses.py chooses and chains them):
//   MODE_ROW_WEIGHT: TARGET_INDEX only, one invocation per row: its w_target (0 if not counted) and whether its index
//                 is out of range, for the normalizer (and linear_cross_entropy's bad-input check; the row kernels
//                 flag their own rows).
//   MODE_SMALL:   one invocation per row, for rows of few classes: row loss and, with WRITE_GRAD, the gradient.
//   MODE_ROW:     one workgroup per row, for rows up to a few hundred thousand classes: the same, in two passes.
//   MODE_ROW_ONCE: one workgroup per row held in registers, read once (GPUs, rows up to 32,768 classes).
//   For longer rows, three kernels:
//   MODE_STATS:   one workgroup per (row, chunk of `chunk` classes): chunk max m, sum exp(p - m), sum a (p - m),
//                 sum a -> partials[4 per chunk].
//   MODE_COMBINE: one invocation per row: merge its chunks' partials -> row loss, and max, log-sum and A.
//   MODE_GRAD:    one invocation per element: grad from row_stats. No loops.
//   MODE_ROW_Z:   one workgroup per row: its z-loss alone, for return_z_loss (a pass of its own, only then).
// INPLACE: the gradient is written over the logits (binding `pred` moves to the outputs, read then written by the same
// invocation, element by element), so the loss needs no buffer of the logits' size.
// Per-invocation loops stay short for any size (chunk / WG and chunks per row), well under lavapipe's limit.
// Liger-Kernel's options, softcap and the z-loss, are push constants (softcap switched on by the specialization
// constant SOFTCAP) with no variants of their own: shaders/include/liger_options.glsl.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"

// Switches (TARGET_INDEX, WEIGHTED, NORM_BUFFER, WRITE_GRAD, INPLACE, VEC4, one MODE_*), bindings (B_*) and the push
// block come from the kernel's declaration in vkloss/ops/cross_entropy.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

// What one access of a row buffer (logits, target, weight, gradient) moves in MODE_ROW: PER_LOAD ELEMENTs, as a
// STORED (access.glsl; WIDE: eight classes in a u64vec4).
#include "access.glsl"
#if VEC4
#define HMAX(v) max(max(v.x, v.y), max(v.z, v.w))
#define ONE_HOT(k, y) vec4(equal(uvec4(4u * (k)) + uvec4(0u, 1u, 2u, 3u), uvec4(uint(y))))
#else
#define HMAX(v) (v)
#define ONE_HOT(k, y) ((k) == uint(y) ? 1.0 : 0.0)
#endif

// STORAGE_F16 / STORAGE_BF16: 16-bit logits, two to a 32-bit word, and a 16-bit gradient, written whole words by
// one invocation: four classes (two words) at a time in MODE_ROW (VEC4), eight (four words) with WIDE, one word (two
// elements) per invocation in MODE_GRAD; MODE_STATS reads elements. The maths stays float32.
// MODE_ROW reads the logits and writes the gradient an access at a time, PER_LOAD ELEMENTs each:
// LOAD_PRED_SPLIT(i, v) and STORE_GRAD_JOINED(i, g), as access.glsl's LOAD_SPLIT and STORE_JOINED for float32.
#if STORAGE_F16 || STORAGE_BF16
#define PACKED16 1
#include "storage16.glsl"
#define PRED(i) LOAD16(pred, i)
#if VEC4
#define PRED_ELEMENT PACKED_ACCESS
#define LOAD_PRED_SPLIT(i, v) LOAD_PACKED(pred, i, v)
#define STORE_GRAD_JOINED(i, g) STORE_PACKED(GRAD_OUT, i, g)
#define LOAD_PRED(k) vec4(unpack_pair16(pred[k].x), unpack_pair16(pred[k].y))  // MODE_ROW_ONCE (never WIDE)
#define STORE_GRAD(k, g) GRAD_OUT[k] = uvec2(pack_pair16((g).xy), pack_pair16((g).zw))
#else
#define PRED_ELEMENT uint
#endif
#else
#define PACKED16 0
#define PRED(i) pred[i]
#define PRED_ELEMENT STORED
#define LOAD_PRED(k) pred[k]
#define STORE_GRAD(k, g) GRAD_OUT[k] = (g)
#if WIDE
#define LOAD_PRED_SPLIT(i, v) LOAD_SPLIT(pred, i, v)
#define STORE_GRAD_JOINED(i, g) STORE_JOINED(GRAD_OUT, i, g)
#endif
#endif
#ifndef LOAD_PRED_SPLIT
#define LOAD_PRED_SPLIT(i, v) v[0] = LOAD_PRED(i)
#define STORE_GRAD_JOINED(i, g) STORE_GRAD(i, g[0])
#endif

#if TARGET_INDEX
layout(set = 0, binding = B_TARGET) readonly buffer Target { int target_index[]; };
#elif defined(B_TARGET)
layout(set = 0, binding = B_TARGET) readonly buffer Target { STORED target[]; };
#endif
#ifdef B_WEIGHT
layout(set = 0, binding = B_WEIGHT) readonly buffer Weight { STORED weight[]; };
#endif
#ifdef B_NORM
layout(set = 0, binding = B_NORM) readonly buffer Norm { float norm[]; };  // sum of the counted rows' w_target
#endif

#include "liger_options.glsl"  // capped(), cap_slope(), z_loss(), z_coefficient()

// The gradient's scale: with NORM_BUFFER 1 / norm, +inf where the counted rows' weights sum to 0 (the row losses are
// summed first, then divided).
float grad_scale() {
#if NORM_BUFFER
    return norm[0] != 0.0 ? 1.0 / norm[0] : uintBitsToFloat(0x7f800000u);
#else
    return p.scale;
#endif
}

// Per-row view of the target: the one-hot class, whether the row counts, and how a target value becomes a coefficient.
struct RowTarget { int index; bool counted; float keep; float spread; };

RowTarget row_target(uint row) {
    RowTarget r;
    r.index = 0;
    r.counted = true;
#if TARGET_INDEX
    r.index = target_index[row];
    bool ignored = p.ignore != 0u && r.index == p.ignore_index;
    r.counted = !ignored && r.index >= 0 && uint(r.index) < p.classes;
#endif
    r.keep = r.counted ? 1.0 - p.smoothing : 0.0;
    r.spread = r.counted ? p.smoothing / float(p.classes) : 0.0;
    return r;
}

// Class indices outside [0, classes) that are not ignore_index: the row kernels (and COMBINE) flag their row in `bad`,
// which the engine counts and raises on at the next host read.
bool row_is_bad(RowTarget r) {
    return !r.counted && !(p.ignore != 0u && r.index == p.ignore_index);
}
#if TARGET_INDEX && (MODE_SMALL || MODE_ROW || MODE_ROW_ONCE || MODE_COMBINE)
layout(set = 0, binding = B_BAD) writeonly buffer Bad { float bad[]; };
#define FLAG_BAD(row, r) bad[row] = row_is_bad(r) ? 1.0 : 0.0
#else
#define FLAG_BAD(row, r)
#endif

#if !MODE_COMBINE && !MODE_ROW_WEIGHT
// a from a target value t (a probability, or the one-hot of the row's index) and, WEIGHTED, its class weight w.
ELEMENT coefficient_of(RowTarget r, ELEMENT t, ELEMENT w) {
    ELEMENT a = t * r.keep + r.spread;
#if WEIGHTED
    a *= w;
#endif
    return a;
}
#endif

#if !MODE_COMBINE && !MODE_ROW_WEIGHT && !WIDE
// a for the k-th ELEMENT of the row (classes k or 4k .. 4k + 3), at flat ELEMENT index i of the matrix.
ELEMENT coefficient(RowTarget r, uint i, uint k) {
#if TARGET_INDEX
    ELEMENT t = ONE_HOT(k, r.index);
#else
    ELEMENT t = target[i];
#endif
#if WEIGHTED
    return coefficient_of(r, t, weight[k]);
#else
    return coefficient_of(r, t, ELEMENT(1.0));
#endif
}
#endif

#if INPLACE
layout(set = 0, binding = B_PRED) buffer Pred { PRED_ELEMENT pred[]; };  // logits in, gradient out
#define GRAD_OUT pred
#elif defined(B_PRED)
layout(set = 0, binding = B_PRED) readonly buffer Pred { PRED_ELEMENT pred[]; };
#define GRAD_OUT grad
#endif
#ifdef B_GRAD
layout(set = 0, binding = B_GRAD) writeonly buffer Grad { PRED_ELEMENT grad[]; };
#endif
#ifdef B_ROW_LOSS
layout(set = 0, binding = B_ROW_LOSS) writeonly buffer RowLoss { float row_loss[]; };
#endif

#if MODE_ROW_WEIGHT
layout(set = 0, binding = B_ROW_WEIGHT) writeonly buffer RowWeight { float row_weight[]; };
layout(set = 0, binding = B_BAD) writeonly buffer Bad { float bad[]; };
void main() {
    uint row = global_index();
    if (row >= p.rows) return;
    RowTarget r = row_target(row);
    float w = 1.0;
#if WEIGHTED
    if (r.counted) w = weight[r.index];
#endif
    row_weight[row] = r.counted ? w : 0.0;
    bad[row] = row_is_bad(r) ? 1.0 : 0.0;
}

#elif MODE_SMALL
void main() {
    uint row = global_index();
    if (row >= p.rows) return;
    RowTarget r = row_target(row);
    uint base = row * p.classes;
    float m = NEG_INF;
    for (uint c = 0; c < p.classes; ++c) m = nan_max(m, capped(pred[base + c]));
    float sum_exp = 0.0, a_dot = 0.0, a_sum = 0.0;
    for (uint c = 0; c < p.classes; ++c) {
        float shifted = capped(pred[base + c]) - m;
        float a = coefficient(r, base + c, c);
        sum_exp += exp(shifted);
        a_dot += weighted_shift(a, shifted);
        a_sum += a;
    }
    float log_sum = log_accurate(sum_exp);
    row_loss[row] = (r.counted ? a_sum * log_sum - a_dot : 0.0) + z_loss(r.counted, m + log_sum);
    FLAG_BAD(row, r);
#if WRITE_GRAD
    float scale = grad_scale();
    a_sum += z_coefficient(r.counted, m + log_sum);
    for (uint c = 0; c < p.classes; ++c) {
        float y = capped(pred[base + c]);
        float softmax = exp(y - m - log_sum);
        float a = coefficient(r, base + c, c);
        GRAD_OUT[base + c] = r.counted ? (softmax * a_sum - a) * scale * cap_slope(y) : 0.0;
    }
#endif
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

// The PER_LOAD ELEMENTs of the k-th access of the row, at flat access index i of the matrix: logits v, coefficients a.
void load_row(RowTarget r, uint i, uint k, out ELEMENT v[PER_LOAD], out ELEMENT a[PER_LOAD]) {
    LOAD_PRED_SPLIT(i, v);
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v[h] = capped(v[h]);
#if WIDE
    ELEMENT t[2], w[2] = ELEMENT[2](ELEMENT(1.0), ELEMENT(1.0));
#if TARGET_INDEX
    t[0] = ONE_HOT(2u * k, r.index);
    t[1] = ONE_HOT(2u * k + 1u, r.index);
#else
    LOAD_SPLIT(target, i, t);
#endif
#if WEIGHTED
    LOAD_SPLIT(weight, k, w);
#endif
    [[unroll]] for (uint h = 0; h < 2; ++h) a[h] = coefficient_of(r, t[h], w[h]);
#else
    a[0] = coefficient(r, i, k);
#endif
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
            [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v_max = max(v_max, HMAX(v[j][h]));
        }
        ROW_RAISE_MAX(v_max)
        [[unroll]] for (uint j = 0; j < ROW_UNROLL; ++j)
            [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) ROW_ACCUMULATE(v[j][h], a[j][h])
    }
    for (; k < width; k += WG) {
        ELEMENT v[PER_LOAD], a[PER_LOAD];
        load_row(r, base + k, k, v, a);
        float v_max = NEG_INF;
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) v_max = max(v_max, HMAX(v[h]));
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
        FLAG_BAD(row, r);
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
        STORE_GRAD_JOINED(base + k, g);
    }
#endif
}

#elif MODE_ROW_ONCE
// One workgroup per row, the row held in registers: each invocation loads VALUES four-class vectors (a
// specialization constant) once, and the loss and the gradient both come from them, so every logit crosses memory
// once each way (Liger-Kernel's single-block rows). For rows up to WG * VALUES * 4 classes, on GPUs
// (vkloss/engine.py row_once chooses WG and VALUES; lavapipe runs large workgroups as coroutines, so it keeps
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
        v[j] = k < width ? capped(LOAD_PRED(base + k)) : vec4(NEG_INF);
        m_own = max(m_own, HMAX(v[j]));
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
        FLAG_BAD(row, r);
    }
#if WRITE_GRAD
    float scale = r.counted ? grad_scale() : 0.0;
    float a_scale = (sums.z + z_coefficient(r.counted, m + log_sum)) * scale;
    [[unroll]] for (uint j = 0; j < VALUES; ++j) {
        uint k = gl_LocalInvocationID.x + j * WG;
        if (k < width) {
            vec4 a = coefficient(r, base + k, k);
            STORE_GRAD(base + k, r.counted ? (exp((v[j] - m) - log_sum) * a_scale - a * scale) * cap_slope(v[j])
                                           : vec4(0.0));
        }
    }
#endif
}

#elif MODE_STATS
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
    for (uint c = first + gl_LocalInvocationID.x; c < last; c += WG) m = nan_max(m, capped(PRED(base + c)));
    m = workgroup_max(m);
    vec4 sums = vec4(0.0);  // sum exp(p - m), sum a (p - m), sum a
    for (uint c = first + gl_LocalInvocationID.x; c < last; c += WG) {
        float shifted = shift_from(capped(PRED(base + c)), m);
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
    FLAG_BAD(row, r);
}

#elif MODE_GRAD
layout(set = 0, binding = B_ROW_STATS) readonly buffer RowStats { vec4 row_stats[]; };
float grad_at(uint i) {
    uint row = i / p.classes;
    RowTarget r = row_target(row);
    vec4 stats = row_stats[row];
    float scale = r.counted ? grad_scale() : 0.0;
    float a = coefficient(r, i, i - row * p.classes);
    float y = capped(PRED(i));
    return r.counted ? (exp((y - stats.x) - stats.y) * stats.z - a) * scale * cap_slope(y) : 0.0;
}

void main() {
    uint n = p.rows * p.classes;
#if PACKED16
    uint w = global_index();  // one word, two elements (possibly of two rows)
    if (2u * w >= n) return;
    float second = 2u * w + 1u < n ? grad_at(2u * w + 1u) : 0.0;
    GRAD_OUT[w] = pack_pair16(vec2(grad_at(2u * w), second));
#else
    uint i = global_index();
    if (i >= n) return;
    GRAD_OUT[i] = grad_at(i);
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
        float v = capped(PRED(base + c));
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
#error "cross_entropy.comp: define one MODE_*"
#endif
