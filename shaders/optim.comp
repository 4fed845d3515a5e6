#version 450
// Optimizer updates of up to COUNT parameters in one dispatch, in place on the device, PyTorch's formulas (no weight
// decay, no dampening, no nesterov; torch.optim's foreach / fused updates do the same in one launch):
//   MODE_SGD:  velocity = momentum * velocity + grad; param -= lr * velocity   (momentum 0: param -= lr * grad)
//   MODE_ADAM: t = steps[slot] + 1; m = b1 m + (1 - b1) grad; v = b2 v + (1 - b2) grad^2;
//              param -= (lr / bias1) * m / (sqrt(v) / sqrt(bias2) + eps), bias_i = 1 - b_i^t
// Slot j is one parameter with its gradient and state. Invocations run through the slots in order (p.end_j: where
// slot j's end): each moves p.items accesses of ACCESS_WIDTH floats (access.glsl) in turn (vkloss/launch.py
// update_accesses: one on GPUs, more on CPU devices, which run every slot's branch for each SIMD batch), and a slot
// whose size is not a multiple of ACCESS_WIDTH ends with one invocation per element left, through float views of the
// same buffers.
// Adam's step counts live on the device (steps, one per parameter of the optimizer; p.index_j is slot j's), so nothing
// in the push constants changes from step to step and a recorded step replays as it is: the first invocation of a
// slot writes t to next_steps, which the optimizer then copies over steps (a write beside the reads would race).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "access.glsl"

// Switches (MODE_*, COUNT), bindings (B_*) and the push block come from the kernel's declaration in vkloss/optim.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

#define SLOT_BUFFERS(j) \
    layout(set = 0, binding = B_GRAD_##j) readonly buffer Grad##j { STORED grad_##j[]; }; \
    layout(set = 0, binding = B_GRAD_##j) readonly buffer GradTail##j { float grad_tail_##j[]; }; \
    layout(set = 0, binding = B_PARAM_##j) buffer Param##j { STORED param_##j[]; }; \
    layout(set = 0, binding = B_PARAM_##j) buffer ParamTail##j { float param_tail_##j[]; }; \
    layout(set = 0, binding = B_STATE1_##j) buffer State1##j { STORED state1_##j[]; }; \
    layout(set = 0, binding = B_STATE1_##j) buffer State1Tail##j { float state1_tail_##j[]; };
#define ADAM_BUFFERS(j) \
    layout(set = 0, binding = B_STATE2_##j) buffer State2##j { STORED state2_##j[]; }; \
    layout(set = 0, binding = B_STATE2_##j) buffer State2Tail##j { float state2_tail_##j[]; };

#if MODE_ADAM
layout(set = 0, binding = B_STEPS) readonly buffer Steps { float steps[]; };
layout(set = 0, binding = B_NEXT_STEPS) writeonly buffer NextSteps { float next_steps[]; };

// 1 - e^x to float32's precision without the device's exp where |x| < 1 (1 - beta^t for t = 1 and beta = 0.999 is
// 0.001: 1 - exp(x) would keep only the digits of exp's last bits there): -expm1(x) by its series, else 1 - exp(x).
float one_minus_exp(float x) {
    if (abs(x) >= 1.0) return 1.0 - exp(x);
    // Horner's rule for expm1(x) / x = sum x^n / (n + 1)!, with literal constants: an array of them lived in
    // scratch memory on Mesa 22, which made the update four times slower there.
    float s = 1.605904384e-10;  // 1/13!
    s = s * x + 2.087675699e-09;  // 1/12!
    s = s * x + 2.505210839e-08;  // 1/11!
    s = s * x + 2.755731922e-07;  // 1/10!
    s = s * x + 2.755731922e-06;  // 1/9!
    s = s * x + 2.480158730e-05;  // 1/8!
    s = s * x + 1.984126984e-04;  // 1/7!
    s = s * x + 1.388888889e-03;  // 1/6!
    s = s * x + 8.333333333e-03;  // 1/5!
    s = s * x + 4.166666667e-02;  // 1/4!
    s = s * x + 1.666666667e-01;  // 1/3!
    s = s * x + 5.000000000e-01;  // 1/2!
    s = s * x + 1.000000000e+00;  // 1/1!
    return -x * s;
}

#define STEP_BIASES(j, local) \
    float t = steps[p.index_##j] + 1.0; \
    if (local == 0) next_steps[p.index_##j] = t; \
    float bias1 = one_minus_exp(t * p.log_beta1), bias2 = one_minus_exp(t * p.log_beta2);
#define UPDATE_VALUE(T, g, w, s1, s2) { \
    T m_ = p.beta1 * s1 + (1.0 - p.beta1) * g; \
    T v_ = p.beta2 * s2 + (1.0 - p.beta2) * g * g; \
    s1 = m_; \
    s2 = v_; \
    w -= (p.lr / bias1) * m_ / (sqrt(v_) / sqrt(bias2) + p.eps); \
}
#define LOAD_STATE2(j, at, s2) LOAD_SPLIT(state2_##j, at, s2)
#define STORE_STATE2(j, at, s2) STORE_JOINED(state2_##j, at, s2)
#define LOAD_TAIL2(j, e, s2) s2 = state2_tail_##j[e]
#define STORE_TAIL2(j, e, s2) state2_tail_##j[e] = s2
#define SLOT(j) SLOT_BUFFERS(j) ADAM_BUFFERS(j)
#elif MODE_SGD
#define STEP_BIASES(j, local)
#define UPDATE_VALUE(T, g, w, s1, s2) { \
    T velocity = p.momentum * s1 + g; \
    s1 = velocity; \
    w -= p.lr * velocity; \
}
#define LOAD_STATE2(j, at, s2)
#define STORE_STATE2(j, at, s2)
#define LOAD_TAIL2(j, e, s2)
#define STORE_TAIL2(j, e, s2)
#define SLOT(j) SLOT_BUFFERS(j)
#else
#error "optim.comp: define MODE_SGD or MODE_ADAM"
#endif

// Invocation `local` of slot j: p.items accesses of the slot's bulk, or one element of its tail.
#define UPDATE_SLOT(j, local) { \
    STEP_BIASES(j, local) \
    uint bulk = p.size_##j / ACCESS_WIDTH, runs = (bulk + p.items - 1) / p.items; \
    if ((local) < runs) { \
        for (uint at = (local) * p.items; at < min(bulk, (local) * p.items + p.items); ++at) { \
            ELEMENT g[PER_LOAD], w[PER_LOAD], s1[PER_LOAD], s2[PER_LOAD]; \
            LOAD_SPLIT(grad_##j, at, g); \
            LOAD_SPLIT(param_##j, at, w); \
            LOAD_SPLIT(state1_##j, at, s1); \
            LOAD_STATE2(j, at, s2); \
            [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) UPDATE_VALUE(ELEMENT, g[h], w[h], s1[h], s2[h]) \
            STORE_STATE2(j, at, s2); \
            STORE_JOINED(state1_##j, at, s1); \
            STORE_JOINED(param_##j, at, w); \
        } \
    } else { \
        uint e = bulk * ACCESS_WIDTH + ((local) - runs); \
        float g = grad_tail_##j[e], w = param_tail_##j[e], s1 = state1_tail_##j[e], s2 = 0.0; \
        LOAD_TAIL2(j, e, s2); \
        UPDATE_VALUE(float, g, w, s1, s2) \
        STORE_TAIL2(j, e, s2); \
        state1_tail_##j[e] = s1; \
        param_tail_##j[e] = w; \
    } \
}

SLOT(0)
#if COUNT > 1
SLOT(1)
#endif
#if COUNT > 2
SLOT(2)
#endif
#if COUNT > 3
SLOT(3)
#endif
#if COUNT > 4
SLOT(4)
#endif
#if COUNT > 5
SLOT(5)
#endif
#if COUNT > 6
SLOT(6)
#endif
#if COUNT > 7
SLOT(7)
#endif
#if COUNT > 8
#error "optim.comp: at most 8 slots (vkloss/optim.py GROUP)"
#endif

void main() {
    uint i = global_index();
    if (i < p.end_0) UPDATE_SLOT(0, i)
#if COUNT > 1
    else if (i < p.end_1) UPDATE_SLOT(1, i - p.end_0)
#endif
#if COUNT > 2
    else if (i < p.end_2) UPDATE_SLOT(2, i - p.end_1)
#endif
#if COUNT > 3
    else if (i < p.end_3) UPDATE_SLOT(3, i - p.end_2)
#endif
#if COUNT > 4
    else if (i < p.end_4) UPDATE_SLOT(4, i - p.end_3)
#endif
#if COUNT > 5
    else if (i < p.end_5) UPDATE_SLOT(5, i - p.end_4)
#endif
#if COUNT > 6
    else if (i < p.end_6) UPDATE_SLOT(6, i - p.end_5)
#endif
#if COUNT > 7
    else if (i < p.end_7) UPDATE_SLOT(7, i - p.end_6)
#endif
}
