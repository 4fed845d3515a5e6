#version 450
// Embedding lookups and their gradient, weight [classes, dim], indices [rows] (int32):
//   MODE_GATHER:  out[n, j] = weight[indices[n], j]: one invocation per output element; an index outside
//                 [0, classes) gives 0 and flags its row in `bad` (the engine counts the flags and raises).
//   MODE_SCATTER: grad_weight[v, j] (+)= sum over n in [n_begin, n_end) with indices[n] == v of grad[n, j]: one
//                 invocation per element of grad_weight, its rows added in index order, so the result is the same
//                 on every run (no atomics); the caller splits long index lists into slices (lavapipe's loop limit).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Switches, bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/embedding.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
layout(set = 0, binding = B_INDICES) readonly buffer Indices { int indices[]; };
#if MODE_GATHER
layout(set = 0, binding = B_WEIGHT) readonly buffer Weight { float weight[]; };
layout(set = 0, binding = B_OUT) writeonly buffer Out { float out_[]; };
layout(set = 0, binding = B_BAD) writeonly buffer Bad { float bad[]; };
#else
layout(set = 0, binding = B_GRAD) readonly buffer Grad { float grad[]; };
layout(set = 0, binding = B_GRAD_WEIGHT) buffer GradWeight { float grad_weight[]; };
#endif

void main() {
    uint i = global_index();
#if MODE_GATHER
    if (i >= p.rows * p.dim) return;
    uint n = i / p.dim, j = i - n * p.dim;
    int v = indices[n];
    bool inside = v >= 0 && uint(v) < p.classes;
    out_[i] = inside ? weight[uint(v) * p.dim + j] : 0.0;
    if (j == 0) bad[n] = inside ? 0.0 : 1.0;
#else
    if (i >= p.classes * p.dim) return;
    uint v = i / p.dim, j = i - v * p.dim;
    float sum = 0.0;
    for (uint n = p.n_begin; n < p.n_end; ++n) {
        if (indices[n] == int(v)) sum += grad[n * p.dim + j];
    }
    grad_weight[i] = p.accumulate != 0u ? grad_weight[i] + sum : sum;
#endif
}
