#version 450
// Optimizer updates, in place on the device, PyTorch's formulas (no weight decay, no dampening, no nesterov):
//   MODE_SGD:  velocity = momentum * velocity + grad; param -= lr * velocity   (momentum 0: param -= lr * grad)
//   MODE_ADAM: m = b1 m + (1 - b1) grad; v = b2 v + (1 - b2) grad^2;
//              param -= (lr / bias1) * m / (sqrt(v) / sqrt(bias2) + eps), bias_i = 1 - b_i^step
// Adam's bias corrections come from a buffer (two per parameter, the parameter's index a push constant), so the
// push constants stay the same from step to step and a recorded step can be replayed.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Bindings (B_*) and the push block come from the kernel's declaration in vkloss/optim.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
layout(set = 0, binding = B_GRAD) readonly buffer Grad { float grad[]; };
#ifdef B_CORRECTIONS
layout(set = 0, binding = B_CORRECTIONS) readonly buffer Corrections { float corrections[]; };  // [parameters][2]
#endif
layout(set = 0, binding = B_PARAM) buffer Param { float param[]; };
layout(set = 0, binding = B_STATE1) buffer State1 { float state1[]; };  // velocity (SGD), m (Adam)
#ifdef B_STATE2
layout(set = 0, binding = B_STATE2) buffer State2 { float state2[]; };  // v (Adam)
#endif

void main() {
    uint i = global_index();
    if (i >= p.n) return;
    float g = grad[i];
#if MODE_SGD
    float velocity = p.momentum * state1[i] + g;
    state1[i] = velocity;
    param[i] -= p.lr * velocity;
#elif MODE_ADAM
    float m = p.beta1 * state1[i] + (1.0 - p.beta1) * g;
    float v = p.beta2 * state2[i] + (1.0 - p.beta2) * g * g;
    state1[i] = m;
    state2[i] = v;
    float bias1 = corrections[2 * p.index], bias2 = corrections[2 * p.index + 1];
    param[i] -= (p.lr / bias1) * m / (sqrt(v) / sqrt(bias2) + p.eps);
#else
#error "optim.comp: define MODE_SGD or MODE_ADAM"
#endif
}
