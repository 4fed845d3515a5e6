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
// bad_partials[w]. The engine then tree-sums them. VEC4 (n and the weights' sizes % 4 == 0): four elements at a time.
// Loops: per_workgroup / WG (/ 4) iterations per invocation, kept small by the caller.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"
#include "reduce.glsl"

// Switches (LOGITS, WEIGHTED, POS_WEIGHT, PER_ELEMENT, WRITE_GRAD, VEC4, STORAGE_*, LABELS_PACKED), bindings (B_*) and
// the push block (sizes in
// ELEMENTs: vec4s with VEC4) come from the kernel's declaration in vkloss/ops/bce.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

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

// STORAGE_F16 / STORAGE_BF16 (with LOGITS and VEC4): 16-bit logits, four (two words) at a time, and their gradient in
// the same dtype; LABELS_PACKED: labels of that dtype too. The maths stays float32.
#if STORAGE_F16 || STORAGE_BF16
#include "storage16.glsl"
#define X_TYPE uvec2
#define LOAD4(array, i) vec4(unpack_pair16(array[i].x), unpack_pair16(array[i].y))
#define LOAD_X(i) LOAD4(pred, i)
#define STORE_GRAD(i, g) grad[i] = uvec2(pack_pair16((g).xy), pack_pair16((g).zw))
#else
#define X_TYPE ELEMENT
#define LOAD_X(i) pred[i]
#define STORE_GRAD(i, g) grad[i] = (g)
#endif
#if LABELS_PACKED
#define Y_TYPE uvec2
#define LOAD_Y(i) LOAD4(labels, i)
#else
#define Y_TYPE ELEMENT
#define LOAD_Y(i) labels[i]
#endif

layout(set = 0, binding = B_PRED) readonly buffer Pred { X_TYPE pred[]; };
layout(set = 0, binding = B_LABELS) readonly buffer Labels { Y_TYPE labels[]; };
#ifdef B_WEIGHT
layout(set = 0, binding = B_WEIGHT) readonly buffer Weight { ELEMENT weight[]; };
#endif
#ifdef B_POS_WEIGHT
layout(set = 0, binding = B_POS_WEIGHT) readonly buffer PosWeight { ELEMENT pos_weight[]; };
#endif
#ifdef B_ELEMENT_LOSS
layout(set = 0, binding = B_ELEMENT_LOSS) writeonly buffer ElementLoss { ELEMENT element_loss[]; };
#else
layout(set = 0, binding = B_LOSS_PARTIALS) writeonly buffer LossPartials { float loss_partials[]; };
#endif
layout(set = 0, binding = B_BAD_PARTIALS) writeonly buffer BadPartials { float bad_partials[]; };
#ifdef B_GRAD
layout(set = 0, binding = B_GRAD) writeonly buffer Grad { X_TYPE grad[]; };
#endif

void main() {
    uint w = workgroup_index();
    uint width = VEC4 != 0 ? 4 : 1;
    uint begin = w * (p.per_workgroup / width), end = min(begin + p.per_workgroup / width, p.n / width);
    ELEMENT loss = ELEMENT(0.0);
    float bad = 0.0;  // COUNT_OUTSIDE already sums the components
    for (uint i = begin + gl_LocalInvocationID.x; i < end; i += WG) {
        ELEMENT x = LOAD_X(i), y = LOAD_Y(i);
#if LOGITS
        bad += COUNT_OUTSIDE(y);
#if POS_WEIGHT
        ELEMENT pw = pos_weight[i % p.pos_weight_size];
        ELEMENT log_weight = 1.0 + (pw - 1.0) * y;
#else
        ELEMENT pw = ELEMENT(1.0), log_weight = ELEMENT(1.0);
#endif
        ELEMENT log_sigmoid = min(x, ELEMENT(0.0)) - log1p_accurate(exp(-abs(x)));
        ELEMENT term = (1.0 - y) * x - log_weight * log_sigmoid;
#if WRITE_GRAD
        ELEMENT g = log_weight / (1.0 + exp(-x)) - pw * y;
#endif
#else
        bad += COUNT_OUTSIDE(x) + COUNT_OUTSIDE(y);
        ELEMENT log_p = max(log_accurate(x), ELEMENT(-100.0));
        ELEMENT log_1mp = max(log1p_accurate(-x), ELEMENT(-100.0));
        ELEMENT term = -(y * log_p + (1.0 - y) * log_1mp);
#if WRITE_GRAD
        ELEMENT g = (x - y) / max(x * (1.0 - x), ELEMENT(1e-12));
#endif
#endif
#if WEIGHTED
        ELEMENT wi = weight[i % p.weight_size];
        term *= wi;
#if WRITE_GRAD
        g *= wi;
#endif
#endif
#if PER_ELEMENT
        element_loss[i] = term;
#else
        loss += term;
#endif
#if WRITE_GRAD
        STORE_GRAD(i, g * p.scale);
#endif
    }
    vec4 sums = workgroup_sum4(vec4(HSUM(loss), bad, 0.0, 0.0));
    if (gl_LocalInvocationID.x == 0) {
#if !PER_ELEMENT
        loss_partials[w] = sums.x;
#endif
        bad_partials[w] = sums.y;
    }
}
