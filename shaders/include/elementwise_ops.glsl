// The elementwise ops' maths, one function per op of vkloss/ops/elementwise.py, op_<name>(a, b, s): elementwise.comp
// applies one of them per variant, and the kernels vkloss/fusion.py generates for a composed op call them in the
// composition's order. ELEMENT (float or vec4) is the includer's; b is unused by the one-operand ops, s by all but
// scale and shift (their number).
#ifndef ELEMENTWISE_OPS_GLSL
#define ELEMENTWISE_OPS_GLSL
#include "losses.glsl"  // log_accurate and tanh_accurate: GLSL's log and tanh lose digits near 1 and near 0

#if VEC4
#define POSITIVE(v) greaterThan(v, vec4(0.0))
#else
#define POSITIVE(v) ((v) > 0.0)
#endif

ELEMENT op_neg(ELEMENT a, ELEMENT b, float s) { return -a; }
ELEMENT op_abs(ELEMENT a, ELEMENT b, float s) { return abs(a); }
ELEMENT op_sigmoid(ELEMENT a, ELEMENT b, float s) { return 1.0 / (1.0 + exp(-a)); }
ELEMENT op_relu(ELEMENT a, ELEMENT b, float s) { return max(a, ELEMENT(0.0)); }
ELEMENT op_exp(ELEMENT a, ELEMENT b, float s) { return exp(a); }
ELEMENT op_log(ELEMENT a, ELEMENT b, float s) { return log_accurate(a); }
ELEMENT op_tanh(ELEMENT a, ELEMENT b, float s) { return tanh_accurate(a); }
ELEMENT op_scale(ELEMENT a, ELEMENT b, float s) { return a * s; }
ELEMENT op_shift(ELEMENT a, ELEMENT b, float s) { return a + s; }
ELEMENT op_add(ELEMENT a, ELEMENT b, float s) { return a + b; }
ELEMENT op_sub(ELEMENT a, ELEMENT b, float s) { return a - b; }
ELEMENT op_div(ELEMENT a, ELEMENT b, float s) { return a / b; }
ELEMENT op_mul(ELEMENT a, ELEMENT b, float s) { return a * b; }
// a = upstream gradient, b = x. sign(0) = 0: abs has gradient 0 at 0, as in PyTorch.
ELEMENT op_abs_backward(ELEMENT a, ELEMENT b, float s) { return a * sign(b); }
// a = upstream gradient, b = x. Gradient 0 at x = 0, as in PyTorch; mix() selects, so a NaN gradient stays put
ELEMENT op_relu_backward(ELEMENT a, ELEMENT b, float s) { return mix(ELEMENT(0.0), a, POSITIVE(b)); }
// a = upstream gradient, b = sigmoid(x) saved by the forward pass.
ELEMENT op_sigmoid_backward(ELEMENT a, ELEMENT b, float s) { return a * b * (1.0 - b); }
// a = upstream gradient, b = tanh(x) saved by the forward pass.
ELEMENT op_tanh_backward(ELEMENT a, ELEMENT b, float s) { return a * (1.0 - b * b); }
#endif
