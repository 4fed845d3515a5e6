#version 450
// Optimizer updates, in place on the device, PyTorch's formulas (no weight decay, no dampening, no nesterov):
//   MODE_SGD:  velocity = momentum * velocity + grad; param -= lr * velocity   (momentum 0: param -= lr * grad)
//   MODE_ADAM: m = b1 m + (1 - b1) grad; v = b2 v + (1 - b2) grad^2;
//              param -= (lr / bias1) * m / (sqrt(v) / sqrt(bias2) + eps), bias_i = 1 - b_i^step
// One invocation per access of ACCESS_WIDTH floats of every buffer (access.glsl); n counts accesses.
// Adam's bias corrections come from a buffer (two per parameter, the parameter's index a push constant), so the
// push constants stay the same from step to step and a recorded step can be replayed.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "access.glsl"

// Switches, bindings (B_*) and the push block come from the kernel's declaration in vkloss/optim.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
layout(set = 0, binding = B_GRAD) readonly buffer Grad { STORED grad[]; };
#ifdef B_CORRECTIONS
layout(set = 0, binding = B_CORRECTIONS) readonly buffer Corrections { float corrections[]; };  // [parameters][2]
#endif
layout(set = 0, binding = B_PARAM) buffer Param { STORED param[]; };
layout(set = 0, binding = B_STATE1) buffer State1 { STORED state1[]; };  // velocity (SGD), m (Adam)
#ifdef B_STATE2
layout(set = 0, binding = B_STATE2) buffer State2 { STORED state2[]; };  // v (Adam)
#endif

void main() {
    uint i = global_index();
    if (i >= p.n) return;
    ELEMENT g[PER_LOAD], w[PER_LOAD], s1[PER_LOAD];
    LOAD_SPLIT(grad, i, g);
    LOAD_SPLIT(param, i, w);
    LOAD_SPLIT(state1, i, s1);
#if MODE_SGD
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) {
        ELEMENT velocity = p.momentum * s1[h] + g[h];
        s1[h] = velocity;
        w[h] -= p.lr * velocity;
    }
#elif MODE_ADAM
    ELEMENT s2[PER_LOAD];
    LOAD_SPLIT(state2, i, s2);
    float bias1 = corrections[2 * p.index], bias2 = corrections[2 * p.index + 1];
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) {
        ELEMENT m = p.beta1 * s1[h] + (1.0 - p.beta1) * g[h];
        ELEMENT v = p.beta2 * s2[h] + (1.0 - p.beta2) * g[h] * g[h];
        s1[h] = m;
        s2[h] = v;
        w[h] -= (p.lr / bias1) * m / (sqrt(v) / sqrt(bias2) + p.eps);
    }
    STORE_JOINED(state2, i, s2);
#else
#error "optim.comp: define MODE_SGD or MODE_ADAM"
#endif
    STORE_JOINED(state1, i, s1);
    STORE_JOINED(param, i, w);
}
