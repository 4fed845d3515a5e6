// Numerics shared by the loss kernels.
#define NEG_INF uintBitsToFloat(0xff800000u)

// log(x) to float32's precision near 1 as well. GLSL's log may be off by 2^-21 absolute in [0.5, 2] (the spec's
// bound, and what lavapipe gives), which is all of log(x) as x nears 1: BCE's -log(p) for p = 1 - 2^-24 was 73%
// off. There, log x = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = (x - 1) / (x + 1), |s| <= 1/3 (x - 1 is exact
// in [0.5, 2]); nine terms leave less than float32's rounding.
#define LOG_SERIES(s, s2) (2.0 * (s) * (1.0 + (s2) * (1.0 / 3.0 + (s2) * (1.0 / 5.0 + (s2) * (1.0 / 7.0 + (s2) * \
    (1.0 / 9.0 + (s2) * (1.0 / 11.0 + (s2) * (1.0 / 13.0 + (s2) * (1.0 / 15.0 + (s2) / 17.0)))))))))

float log_accurate(float x) {
    if (x < 0.5 || x > 2.0) return log(x);
    float s = (x - 1.0) / (x + 1.0);
    return LOG_SERIES(s, s * s);
}

vec4 log_accurate(vec4 x) {
    vec4 s = (x - 1.0) / (x + 1.0);
    return mix(log(x), LOG_SERIES(s, s * s), equal(clamp(x, vec4(0.5), vec4(2.0)), x));
}

// log(1 + x) for x > -1, accurate also where 1 + x rounds (GLSL has no log1p): Goldberg's correction.
float log1p_accurate(float x) {
    float u = 1.0 + x;
    return u == 1.0 ? x : log_accurate(u) * x / (u - 1.0);
}

vec4 log1p_accurate(vec4 x) {
    vec4 u = 1.0 + x;
    return mix(log_accurate(u) * x / (u - 1.0), x, equal(u, vec4(1.0)));
}

float nan_max(float a, float b) {
    return isnan(b) ? b : max(a, b);
}

// a * shifted, 0 where a is 0: a class that does not count (a masked logit, -inf, of a class with no target mass)
// adds nothing, where the product would be 0 * -inf = NaN.
float weighted_shift(float a, float shifted) {
    return a == 0.0 ? 0.0 : a * shifted;
}

vec4 weighted_shift(vec4 a, vec4 shifted) {
    return mix(a * shifted, vec4(0.0), equal(a, vec4(0.0)));
}

// v - m for a running or partial maximum m; -inf where m is still -inf (every value so far masked), where the
// difference would be -inf - -inf = NaN. exp of it is then 0, as for any masked logit.
float shift_from(float v, float m) {
    return m == NEG_INF ? NEG_INF : v - m;
}

vec4 shift_from(vec4 v, float m) {
    return m == NEG_INF ? vec4(NEG_INF) : v - m;
}
