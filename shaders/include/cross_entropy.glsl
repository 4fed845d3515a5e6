// Fused cross-entropy, shared by its row kernels (cross_entropy_row.comp) and its chunked ones
// (cross_entropy_chunked.comp): the loss and d(loss)/d(pred) for logits p [rows, classes], PyTorch's F.cross_entropy.
// Every option is a per-class coefficient a_rc of the row's loss, so one set of kernels serves them all:
//   loss_r = sum_c a_rc (lse_r - p_rc) = A_r lse_r - sum_c a_rc p_rc,   A_r = sum_c a_rc,  lse_r = log sum_c exp(p_rc)
//   grad   = (softmax(p) A_r - a) * scale
//   a_rc   = w_c (t_rc (1 - smoothing) + smoothing / classes)
// t is the target row (probabilities) or, with TARGET_INDEX, the one-hot row of the class index target_index[r],
// read directly (no one-hot matrix); a row whose index is ignore_index (or out of range: flagged in `bad` and
// reported) has a = 0 and contributes neither loss nor gradient. w (WEIGHTED) are class weights, else 1.
// scale is the push constant `scale` (1/rows for a mean, 1 for a sum or no reduction), or with NORM_BUFFER 1 / the
// device-computed sum of the counted rows' w_target (PyTorch's weighted mean over index targets), which divides the
// summed row losses afterwards (reductions.comp DIVIDE). A zero sum gives what PyTorch's division gives: a NaN or
// +-inf loss, and a gradient that is NaN or +-inf in every counted row (which of the two where may differ).
// Everything is computed relative to a row (or chunk) maximum m, so logits of any magnitude lose no precision.
// Masked logits (-inf) are 0 after exp and add nothing where a is 0 (weighted_shift), also when a whole invocation's
// share or chunk is masked (shift_from), so a masked row stays finite as in PyTorch; a row of nothing but -inf gives
// NaN, as PyTorch's does. A normalizer (NORM_BUFFER) may be negative (negative class weights), as in PyTorch.
// INPLACE: the gradient is written over the logits (binding `pred` moves to the outputs, read then written by the
// same invocation), so the loss needs no buffer of the logits' size. A shard of the vocabulary (vocabulary-parallel
// cross-entropy, vkloss/distributed.py): the logits are classes [class_offset, class_offset + classes) of
// total_classes (0: classes), the class indices global; a row counts by its global index, and its one-hot and its
// weight are read where the index falls in the shard (`here`). Liger-Kernel's options, softcap and the z-loss,
// are in liger_options.glsl.
//
// The switches (TARGET_INDEX, WEIGHTED, NORM_BUFFER, WRITE_GRAD, INPLACE, VEC4, WIDE, STORAGE_*, one MODE_*), the
// bindings (B_*: a buffer is declared here exactly where the variant binds it) and the push block come from the
// kernels' declaration in vkloss/ops/cross_entropy.py. What follows is the layer the kernels read and write through:
// typed functions over the logits, the target, the weights and the gradient, in any width and storage.
#ifndef CROSS_ENTROPY_GLSL
#define CROSS_ENTROPY_GLSL
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"

layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

// One access of a row buffer moves PER_LOAD ELEMENTs (a float, a vec4, or with WIDE two vec4s) of float32 values,
// STORED (access.glsl). STORAGE_F16 / STORAGE_BF16: 16-bit logits and gradient, two to a 32-bit word, written whole
// words by one invocation (storage16.glsl): an access of four classes (two words; eight with WIDE) in the row
// kernels, or one element (GRAD: one word) in the chunked ones. The maths stays float32.
#include "access.glsl"
#if STORAGE_F16 || STORAGE_BF16
#define PACKED16 1
#include "storage16.glsl"
#if VEC4
#define LOGITS PACKED_ACCESS
#else
#define LOGITS uint
#endif
#else
#define PACKED16 0
#define LOGITS STORED
#endif

float hmax(float v) { return v; }
float hmax(vec4 v) { return max(max(v.x, v.y), max(v.z, v.w)); }
// The one-hot target of ELEMENT k of a row (class k, or classes 4k .. 4k + 3) for the class index y.
#if VEC4
vec4 one_hot(uint k, int y) { return vec4(equal(uvec4(4u * k) + uvec4(0u, 1u, 2u, 3u), uvec4(uint(y)))); }
#else
float one_hot(uint k, int y) { return k == uint(y) ? 1.0 : 0.0; }
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
#if INPLACE
layout(set = 0, binding = B_PRED) buffer Pred { LOGITS pred[]; };  // logits in, gradient out
#define GRAD_OUT pred
#elif defined(B_PRED)
layout(set = 0, binding = B_PRED) readonly buffer Pred { LOGITS pred[]; };
#define GRAD_OUT grad
#endif
#ifdef B_GRAD
layout(set = 0, binding = B_GRAD) writeonly buffer Grad { LOGITS grad[]; };
#endif
#ifdef B_ROW_LOSS
layout(set = 0, binding = B_ROW_LOSS) writeonly buffer RowLoss { float row_loss[]; };
#endif
#ifdef B_BAD
layout(set = 0, binding = B_BAD) writeonly buffer Bad { float bad[]; };
#endif

#include "liger_options.glsl"  // capped(), cap_slope(), z_loss(), z_coefficient()

// ---- the logits and the gradient -------------------------------------------------------------------------------
#ifdef B_PRED
#if !VEC4
// Logit i of the matrix, in any storage.
float logit(uint i) {
#if PACKED16
    return LOAD16(pred, i);
#else
    return pred[i];
#endif
}
#endif
#if VEC4 || !PACKED16
// Access i of the logits: PER_LOAD ELEMENTs.
void load_logits(uint i, out ELEMENT v[PER_LOAD]) {
#if PACKED16
    LOAD_PACKED(pred, i, v);
#else
    LOAD_SPLIT(pred, i, v);
#endif
}
#endif
#endif

#if WRITE_GRAD
#if VEC4 || !PACKED16
// Access i of the gradient, in the logits' storage.
void store_grad(uint i, ELEMENT g[PER_LOAD]) {
#if PACKED16
    STORE_PACKED(GRAD_OUT, i, g);
#else
    STORE_JOINED(GRAD_OUT, i, g);
#endif
}
#else
// Word w of a 16-bit gradient: elements 2w and 2w + 1.
void store_grad_word(uint w, vec2 g) { GRAD_OUT[w] = pack_pair16(g); }
#endif
#endif

// ---- the target and the coefficients ---------------------------------------------------------------------------
// The gradient's scale: with NORM_BUFFER 1 / norm, +inf where the counted rows' weights sum to 0 (the row losses are
// summed first, then divided).
float grad_scale() {
#if NORM_BUFFER
    return norm[0] != 0.0 ? 1.0 / norm[0] : uintBitsToFloat(0x7f800000u);
#else
    return p.scale;
#endif
}

// Per-row view of the target: its class (global, and within these logits), whether the row counts and its class is
// here, and how a target value becomes a coefficient.
struct RowTarget { int global; int index; bool counted; bool here; float keep; float spread; };

uint total_classes() { return p.total_classes != 0u ? p.total_classes : p.classes; }

RowTarget row_target(uint row) {
    RowTarget r;
    r.global = 0;
    r.counted = true;
#if TARGET_INDEX
    r.global = target_index[row];
    bool ignored = p.ignore != 0u && r.global == p.ignore_index;
    r.counted = !ignored && r.global >= 0 && uint(r.global) < total_classes();
#endif
    r.index = r.global - int(p.class_offset);
    r.here = r.counted && r.index >= 0 && uint(r.index) < p.classes;
    r.keep = r.counted ? 1.0 - p.smoothing : 0.0;
    r.spread = r.counted ? p.smoothing / float(total_classes()) : 0.0;
    return r;
}

// A class index outside [0, total classes) that is not ignore_index. The kernels that bind `bad` flag each of their
// rows there; the engine counts the flags and raises at the next host read.
bool row_is_bad(RowTarget r) {
    return !r.counted && !(p.ignore != 0u && r.global == p.ignore_index);
}

void flag_bad(uint row, RowTarget r) {
#ifdef B_BAD
    bad[row] = row_is_bad(r) ? 1.0 : 0.0;
#endif
}

// a from a target value t (a probability, or the one-hot of the row's index) and, WEIGHTED, its class weight w.
ELEMENT coefficient_of(RowTarget r, ELEMENT t, ELEMENT w) {
    ELEMENT a = t * r.keep + r.spread;
#if WEIGHTED
    a *= w;
#endif
    return a;
}

#if TARGET_INDEX || defined(B_TARGET)
// The coefficients of access k of the row (its PER_LOAD ELEMENTs), at flat access index i of the matrix.
void coefficients(RowTarget r, uint i, uint k, out ELEMENT a[PER_LOAD]) {
    ELEMENT t[PER_LOAD], w[PER_LOAD];
#if TARGET_INDEX
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) t[h] = one_hot(PER_LOAD * k + h, r.index);
#else
    LOAD_SPLIT(target, i, t);
#endif
#if WEIGHTED
    LOAD_SPLIT(weight, k, w);
#else
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) w[h] = ELEMENT(1.0);
#endif
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) a[h] = coefficient_of(r, t[h], w[h]);
}

#if PER_LOAD == 1
// The coefficient of ELEMENT k of the row (class k, or classes 4k .. 4k + 3), at flat ELEMENT index i.
ELEMENT coefficient(RowTarget r, uint i, uint k) {
    ELEMENT a[1];
    coefficients(r, i, k, a);
    return a[0];
}
#endif
#endif

#endif
