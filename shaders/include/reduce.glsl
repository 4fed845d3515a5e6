// Deterministic workgroup reductions: a balanced binary tree in a fixed order, so the same input always gives the
// same bits and a sum's error grows with log2(n), not n. No atomics. WG must be a power of two.
// By default the tree is in shared memory: log2(WG) barriers (8 loop iterations for WG = 256, far below lavapipe's
// per-invocation loop limit). With SUBGROUP_REDUCE (for workgroups of up to 1,024 on GPUs, whose devices support
// subgroup shuffles: vkloss/engine.py row_once) the tree runs within each subgroup by shuffles (a butterfly, which
// leaves every lane the same bits: a + b == b + a), then the first subgroup sums the subgroups' results in a fixed
// order: three barriers whatever WG is.
shared vec4 partial[WG];

#if SUBGROUP_REDUCE
#ifndef NEG_INF
#define NEG_INF uintBitsToFloat(0xff800000u)
#endif
shared vec4 reduced;

float symmetric_nan_max(float a, float b) {  // NaN if either is, the same on both lanes of a butterfly pair
    return isnan(b) ? b : isnan(a) ? a : max(a, b);
}

vec4 subgroup_sum4(vec4 value) {
    for (uint mask = gl_SubgroupSize >> 1; mask > 0; mask >>= 1) value += subgroupShuffleXor(value, mask);
    return value;
}

float subgroup_max(float value) {
    for (uint mask = gl_SubgroupSize >> 1; mask > 0; mask >>= 1)
        value = symmetric_nan_max(value, subgroupShuffleXor(value, mask));
    return value;
}

vec4 workgroup_sum4(vec4 value) {
    value = subgroup_sum4(value);
    if (gl_SubgroupInvocationID == 0) partial[gl_SubgroupID] = value;
    barrier();
    if (gl_SubgroupID == 0) {
        vec4 total = vec4(0.0);
        for (uint s = gl_SubgroupInvocationID; s < gl_NumSubgroups; s += gl_SubgroupSize) total += partial[s];
        total = subgroup_sum4(total);
        if (gl_SubgroupInvocationID == 0) reduced = total;
    }
    barrier();
    vec4 total = reduced;
    barrier();  // partial[] and reduced are reused by the next reduction
    return total;
}

float workgroup_sum(float value) {
    return workgroup_sum4(vec4(value, 0.0, 0.0, 0.0)).x;
}

float workgroup_max(float value) {
    value = subgroup_max(value);
    if (gl_SubgroupInvocationID == 0) partial[gl_SubgroupID].x = value;
    barrier();
    if (gl_SubgroupID == 0) {
        float total = NEG_INF;
        for (uint s = gl_SubgroupInvocationID; s < gl_NumSubgroups; s += gl_SubgroupSize)
            total = symmetric_nan_max(total, partial[s].x);
        total = subgroup_max(total);
        if (gl_SubgroupInvocationID == 0) reduced.x = total;
    }
    barrier();
    float total = reduced.x;
    barrier();
    return total;
}
#else

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
#endif
