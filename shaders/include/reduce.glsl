// Deterministic workgroup sum: a balanced binary tree in shared memory (pairwise summation), in a fixed order,
// so the same input always gives the same bits and the error grows with log2(n), not n.
// WG must be a power of two. 8 loop iterations for WG = 256: far below lavapipe's per-invocation loop limit.
shared float partial[WG];

float workgroup_sum(float value) {
    uint lid = gl_LocalInvocationID.x;
    partial[lid] = value;
    barrier();
    for (uint stride = WG / 2; stride > 0; stride >>= 1) {
        if (lid < stride) partial[lid] += partial[lid + stride];
        barrier();
    }
    float total = partial[0];
    barrier();  // partial[] may be reused by the caller
    return total;
}
