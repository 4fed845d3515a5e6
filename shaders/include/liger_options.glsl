// Liger-Kernel's cross-entropy options, shared by the cross-entropy kernels (include/cross_entropy.glsl) and
// linear_cross_entropy.comp. Include after the push block, which declares `float softcap` and `float z_scale` (0 when
// off), and after losses.glsl.
//   softcap: each logit is read as softcap tanh(logit / softcap), and its gradient times 1 - (capped / softcap)^2.
//     Whether it is on is the specialization constant SOFTCAP, so a kernel without it has no trace of it (a branch
//     on the push constant alone costs CPU devices the tanh on every logit, both sides of the select computed).
//   z-loss: z_scale lse^2 is added to a counted row's loss (lse: log sum exp of the capped logits), and
//     2 z_scale lse softmax to its gradient: the row's A grows by 2 z_scale lse.
#ifndef LIGER_OPTIONS_GLSL
#define LIGER_OPTIONS_GLSL

layout(constant_id = 2) const bool SOFTCAP = false;
float capped(float v) { return SOFTCAP ? p.softcap * tanh_accurate(v / p.softcap) : v; }
vec4 capped(vec4 v) { return SOFTCAP ? p.softcap * tanh_accurate(v / p.softcap) : v; }
float cap_slope(float y) { return SOFTCAP ? 1.0 - (y / p.softcap) * (y / p.softcap) : 1.0; }
vec4 cap_slope(vec4 y) { return SOFTCAP ? 1.0 - (y / p.softcap) * (y / p.softcap) : vec4(1.0); }

// The z-loss of a row whose log-sum-exp is lse (0 where the row does not count), and what it adds to A.
float z_loss(bool counted, float lse) { return counted && p.z_scale != 0.0 ? p.z_scale * lse * lse : 0.0; }
float z_coefficient(bool counted, float lse) { return counted && p.z_scale != 0.0 ? 2.0 * p.z_scale * lse : 0.0; }

#endif
