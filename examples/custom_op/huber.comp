#version 450
// Huber loss (smooth L1), elementwise, as PyTorch's F.huber_loss defines it, with d = pred - target:
//   term = 0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)
//   d term / d pred = d where |d| < delta, else delta sign(d)
// MODE_FORWARD: bindings pred, target -> terms.  MODE_BACKWARD: upstream grad, pred, target -> d/dpred.
// common.glsl (vkloss's) gives WG and global_index(); one invocation per element, so no loops at all.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(push_constant) uniform Push { uint n; float delta; } p;

#if MODE_FORWARD
layout(set = 0, binding = 0) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = 1) readonly buffer Target { float target[]; };
layout(set = 0, binding = 2) writeonly buffer Terms { float terms[]; };
void main() {
    uint i = global_index();
    if (i >= p.n) return;
    float d = pred[i] - target[i];
    terms[i] = abs(d) < p.delta ? 0.5 * d * d : p.delta * (abs(d) - 0.5 * p.delta);
}
#else
layout(set = 0, binding = 0) readonly buffer Upstream { float upstream[]; };
layout(set = 0, binding = 1) readonly buffer Pred { float pred[]; };
layout(set = 0, binding = 2) readonly buffer Target { float target[]; };
layout(set = 0, binding = 3) writeonly buffer Grad { float grad[]; };
void main() {
    uint i = global_index();
    if (i >= p.n) return;
    float d = pred[i] - target[i];
    grad[i] = upstream[i] * (abs(d) < p.delta ? d : p.delta * sign(d));
}
#endif
