// Deterministic workgroup reductions: a balanced binary tree in shared memory, in a fixed order, so the same input
// always gives the same bits and a sum's error grows with log2(n), not n. No atomics.
// WG must be a power of two. 8 loop iterations for WG = 256: far below lavapipe's per-invocation loop limit.
shared vec4 partial[WG];

vec4 workgroup_sum4(vec4 value) {
    uint lid = gl_LocalInvocationID.x;
    partial[lid] = value;
    barrier();
    for (uint stride = WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) partial[lid] += partial[lid + stride];
        barrier();
    }
    vec4 total = partial[0];
    barrier();  // partial[] is reused by the next reduction
    return total;
}

float workgroup_sum(float value) {
    return workgroup_sum4(vec4(value, 0.0, 0.0, 0.0)).x;
}

float workgroup_max(float value) {
    uint lid = gl_LocalInvocationID.x;
    partial[lid].x = value;
    barrier();
    for (uint stride = WG / 2; stride > 0; stride >>= 1) {
        // NaN-propagating max: a NaN logit must give a NaN loss, whatever GLSL's max() picks
        if (lid < stride) {
            float other = partial[lid + stride].x;
            partial[lid].x = isnan(other) ? other : max(partial[lid].x, other);
        }
        barrier();
    }
    float total = partial[0].x;
    barrier();
    return total;
}
