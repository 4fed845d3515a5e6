// Numerics shared by the loss kernels.
#define NEG_INF uintBitsToFloat(0xff800000u)

// log(x) and log(1 + x) to float32's precision everywhere (GLSL has no log1p). GLSL's log may be off by 2^-21
// absolute in [0.5, 2] (the spec's bound, and what lavapipe gives), which is all of log(x) as x nears 1: BCE's -log(p)
// for p = 1 - 2^-24 was 73% off. Here u = 2^e m with m in [sqrt(1/2), sqrt(2)), and
//   log u = e ln 2 + 2 atanh(s) = e ln 2 + 2 (s + s^3/3 + s^5/5 + ...),  s = (m - 1) / (m + 1),  |s| <= 0.172:
// six terms leave less than float32's rounding, and ln 2 in two parts (the first exact times any e) keeps e ln 2
// exact. Where e = 0, m - 1 is u - 1, which the caller knows exactly (x - 1 for log x, x itself for log(1 + x),
// where 1 + x rounds), so one division serves both and neither calls GLSL's log (computing both for every value
// nearly doubled BCE's time on lavapipe).
// Zero gives -inf, negative numbers and NaN give NaN, +inf +inf, as log does. Denormals are as the device's frexp
// reads them. LOG_ACCURATE(T, IT) defines them for a float type T and the int type IT of its exponent.
bool is_less(float a, float b) { return a < b; }
bvec4 is_less(vec4 a, vec4 b) { return lessThan(a, b); }
bool is_equal(float a, float b) { return a == b; }
bvec4 is_equal(vec4 a, vec4 b) { return equal(a, b); }
#define LOG_ACCURATE(T, IT) \
T log_reduced(T u, T u_minus_one) { \
    IT k; \
    T m = frexp(u, k); \
    T low = T(is_less(m, T(0.70710678))); \
    m += m * low; \
    T e = T(k) - low; \
    T d = mix(m - 1.0, u_minus_one, is_equal(e, T(0.0))); \
    T s = d / (d + 2.0), s2 = s * s; \
    T series = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + \
        s2 * (1.0 / 11.0)))))); \
    T result = e * 0.693145751953125 + (e * 1.428606765330187e-06 + series); \
    result = mix(result, u, isinf(u)); \
    result = mix(result, T(NEG_INF), is_equal(u, T(0.0))); \
    result = mix(result, T(uintBitsToFloat(0x7fc00000u)), is_less(u, T(0.0))); \
    return mix(result, u, isnan(u)); \
} \
T log_accurate(T x) { return log_reduced(x, x - 1.0); } \
T log1p_accurate(T x) { return log_reduced(1.0 + x, x); }
LOG_ACCURATE(float, int)
LOG_ACCURATE(vec4, ivec4)

// tanh to float32's precision: GLSL's tanh comes from exp's difference, 19% off at 1e-7 on lavapipe. Below
// |x| = 0.25 its odd series to x^13 (less than float32's rounding left), above it 1 - 2 / (e^2|x| + 1) with the sign
// back: +-1 at large |x| (and at +-inf), never inf / inf; NaN stays NaN.
bool at_most(float a, float b) { return a <= b; }
bvec4 at_most(vec4 a, vec4 b) { return lessThanEqual(a, b); }
#define TANH_ACCURATE(T) \
T tanh_accurate(T x) { \
    T x2 = x * x; \
    T series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0 + \
        x2 * (-1382.0 / 155925.0 + x2 * (21844.0 / 6081075.0))))))); \
    T magnitude = abs(x); \
    T far = sign(x) * (1.0 - 2.0 / (exp(2.0 * min(magnitude, T(20.0))) + 1.0)); \
    return mix(mix(far, series, at_most(magnitude, T(0.25))), x, isnan(x)); \
}
TANH_ACCURATE(float)
TANH_ACCURATE(vec4)

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
