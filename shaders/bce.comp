#version 450
// Fused binary cross-entropy. Per element, with x = pred[i], y = labels[i]:
//   default (PyTorch's F.binary_cross_entropy), x a probability:
//     loss = -(y log x + (1 - y) log(1 - x)), each log clamped at -100
//     grad = (x - y) / max(x (1 - x), 1e-12)
//   LOGITS (F.binary_cross_entropy_with_logits), x a logit of any magnitude, l = 1 + (pos_weight - 1) y:
//     loss = (1 - y) x - l log_sigmoid(x),  log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))  (never overflows)
//     grad = l sigmoid(x) - pos_weight y     (pos_weight = 1 without POS_WEIGHT: sigmoid(x) - y)
//   WEIGHTED: both times weight[i % weight_size]; POS_WEIGHT: pos_weight[i % pos_weight_size] (both broadcast over
//   the leading dimensions); the gradient is also times `scale` (1/n for a mean).
// One pass: workgroup w reads its range of `per_workgroup` elements once, writes their gradient (WRITE_GRAD), the sum
// of their loss terms to loss_partials[w] (with PER_ELEMENT, each term to element_loss[i] instead: reduction
// "none"), and how many of its x (probabilities only) or y lie outside [0, 1] (NaN counts as outside) to
// bad_partials[w]. The engine then tree-sums them; a single workgroup's sums are the results (loss_partials is then
// the output, its sum times partial_scale, and no tree sum runs). VEC4 (n and the weights' sizes % 4 == 0): four elements at a time;
// WIDE (% 8, CPU devices): eight, one access of each buffer (32 bytes of float32, 16 of 16-bit values).
// Loops: per_workgroup / WG (/ 4, / 8) iterations per invocation, kept small by the caller.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"
#include "reduce.glsl"

// Switches (LOGITS, WEIGHTED, POS_WEIGHT, PER_ELEMENT, WRITE_GRAD, VEC4, WIDE, STORAGE_*, LABELS_PACKED), bindings
// (B_*) and the push block (sizes in accesses: vec4s with VEC4, eight floats with WIDE) come from the kernel's
// declaration in vkloss/ops/bce.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

#include "access.glsl"
#if VEC4
// NaN compares false, so it counts as outside
#define COUNT_OUTSIDE(v) (4.0 - dot(vec4(greaterThanEqual(v, vec4(0.0))) * vec4(lessThanEqual(v, vec4(1.0))), vec4(1.0)))
#else
#define COUNT_OUTSIDE(v) ((v) >= 0.0 && (v) <= 1.0 ? 0.0 : 1.0)
#endif

// One access of a buffer moves PER_LOAD ELEMENTs, read into or written from an array of them:
//   weight, pos_weight, element_loss: a STORED (access.glsl): an ELEMENT, or with WIDE eight float32 in a u64vec4;
//   pred and grad: STORAGE_F16 / STORAGE_BF16 (with LOGITS and VEC4): a PACKED_ACCESS (storage16.glsl) of four 16-bit
//   values in two words, or with WIDE eight in four, the gradient in the same dtype; else a STORED;
//   labels: LABELS_PACKED: 16-bit values like pred; else a STORED.
// The maths stays float32.
#if STORAGE_F16 || STORAGE_BF16
#include "storage16.glsl"
#define X_TYPE PACKED_ACCESS
#define LOAD_X(i, v) LOAD_PACKED(pred, i, v)
#define STORE_GRAD(i, g) STORE_PACKED(grad, i, g)
#else
#define X_TYPE STORED
#define LOAD_X(i, v) LOAD_SPLIT(pred, i, v)
#define STORE_GRAD(i, g) STORE_JOINED(grad, i, g)
#endif
#if LABELS_PACKED
#define Y_TYPE PACKED_ACCESS
#define LOAD_Y(i, v) LOAD_PACKED(labels, i, v)
#else
#define Y_TYPE STORED
#define LOAD_Y(i, v) LOAD_SPLIT(labels, i, v)
#endif

layout(set = 0, binding = B_PRED) readonly buffer Pred { X_TYPE pred[]; };
layout(set = 0, binding = B_LABELS) readonly buffer Labels { Y_TYPE labels[]; };
#ifdef B_WEIGHT
layout(set = 0, binding = B_WEIGHT) readonly buffer Weight { STORED weight[]; };
#endif
#ifdef B_POS_WEIGHT
layout(set = 0, binding = B_POS_WEIGHT) readonly buffer PosWeight { STORED pos_weight[]; };
#endif
#ifdef B_ELEMENT_LOSS
layout(set = 0, binding = B_ELEMENT_LOSS) writeonly buffer ElementLoss { STORED element_loss[]; };
#else
layout(set = 0, binding = B_LOSS_PARTIALS) writeonly buffer LossPartials { float loss_partials[]; };
#endif
layout(set = 0, binding = B_BAD_PARTIALS) writeonly buffer BadPartials { float bad_partials[]; };
#ifdef B_GRAD
layout(set = 0, binding = B_GRAD) writeonly buffer Grad { X_TYPE grad[]; };
#endif

// One ELEMENT's loss term (its gradient in g), and how many of its values lie outside [0, 1] in `bad`.
ELEMENT bce_term(ELEMENT x, ELEMENT y, ELEMENT pw, ELEMENT wi, inout float bad, out ELEMENT g) {
#if LOGITS
    bad += COUNT_OUTSIDE(y);
#if POS_WEIGHT
    ELEMENT log_weight = 1.0 + (pw - 1.0) * y;
#else
    ELEMENT log_weight = ELEMENT(1.0);
#endif
    // -log_sigmoid(x) = max(-x, 0) + log1p(exp(-|x|)), its exact part added to (1 - y) x first, as PyTorch does: for
    // x = -33, y = 0, x - (x - 3.6e-15) rounds to 0 where the loss is 3.6e-15
    ELEMENT term = ((1.0 - y) * x + log_weight * max(-x, ELEMENT(0.0))) + log_weight * log1p_accurate(exp(-abs(x)));
#if WRITE_GRAD
    g = log_weight / (1.0 + exp(-x)) - pw * y;
#endif
#else
    bad += COUNT_OUTSIDE(x) + COUNT_OUTSIDE(y);
    ELEMENT log_p = max(log_accurate(x), ELEMENT(-100.0));
    ELEMENT log_1mp = max(log1p_accurate(-x), ELEMENT(-100.0));
    ELEMENT term = -(y * log_p + (1.0 - y) * log_1mp);
#if WRITE_GRAD
    g = (x - y) / max(x * (1.0 - x), ELEMENT(1e-12));
#endif
#endif
#if WRITE_GRAD
    g *= wi * p.scale;
#endif
    return term * wi;
}

void main() {
    uint w = workgroup_index();
    uint begin = w * (p.per_workgroup / ACCESS_WIDTH), end = min(begin + p.per_workgroup / ACCESS_WIDTH,
                                                                  p.n / ACCESS_WIDTH);
    ELEMENT loss = ELEMENT(0.0);
    float bad = 0.0;  // COUNT_OUTSIDE already sums the components
    for (uint i = begin + gl_LocalInvocationID.x; i < end; i += WG) {
        ELEMENT x[PER_LOAD], y[PER_LOAD], pw[PER_LOAD], wi[PER_LOAD], term[PER_LOAD], g[PER_LOAD];
        LOAD_X(i, x);
        LOAD_Y(i, y);
#if POS_WEIGHT
        LOAD_SPLIT(pos_weight, i % p.pos_weight_size, pw);
#else
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) pw[h] = ELEMENT(1.0);
#endif
#if WEIGHTED
        LOAD_SPLIT(weight, i % p.weight_size, wi);
#else
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) wi[h] = ELEMENT(1.0);
#endif
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) term[h] = bce_term(x[h], y[h], pw[h], wi[h], bad, g[h]);
#if PER_ELEMENT
        STORE_JOINED(element_loss, i, term);
#else
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) loss += term[h];
#endif
#if WRITE_GRAD
        STORE_GRAD(i, g);
#endif
    }
    vec4 sums = workgroup_sum4(vec4(HSUM(loss), bad, 0.0, 0.0));
    if (gl_LocalInvocationID.x == 0) {
#if !PER_ELEMENT
        loss_partials[w] = sums.x * p.partial_scale;
#endif
        bad_partials[w] = sums.y;
    }
}
