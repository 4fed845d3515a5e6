// Numerics shared by the loss kernels.
#define NEG_INF uintBitsToFloat(0xff800000u)

// log(1 + x) for x > -1, accurate also where 1 + x rounds (GLSL has no log1p): Goldberg's correction.
float log1p_accurate(float x) {
    float u = 1.0 + x;
    return u == 1.0 ? x : log(u) * x / (u - 1.0);
}

vec4 log1p_accurate(vec4 x) {
    vec4 u = 1.0 + x;
    return mix(log(u) * x / (u - 1.0), x, equal(u, vec4(1.0)));
}

float nan_max(float a, float b) {
    return isnan(b) ? b : max(a, b);
}
