#version 450
// Linear cross-entropy, PyTorch's F.cross_entropy(hidden @ weight.T + bias, target), in blocks of logits: the
// [rows, classes] logits never exist at once, only one block, rows [row_begin, row_begin + rows) (local row 0 is
// row_begin) by classes [chunk_begin, chunk_begin + chunk), laid out [rows, chunk] (vkloss/ops/linear_cross_entropy.py
// makes each block with matmul.comp and chains these modes: whole rows at a time, or the vocabulary in chunks for
// every row where not even one row fits). Same coefficient form as cross_entropy.comp:
//   loss_r = A_r lse_r - sum_c a_rc z_rc,   a_rc = w_c (t_rc (1 - smoothing) + smoothing / classes),  A_r = sum_c a_rc
//   d/dz   = (softmax(z) A_r - a) * scale
// with t the one-hot row of target index r (an ignored or out-of-range index makes every a_rc 0).
// Modes:
//   MODE_STATS: one workgroup per row: this chunk's max m, sum exp(z - m), sum a (z - m) and sum a, merged into the
//               row's running stats (FIRST: the first chunk starts them), re-based on the larger max. Sums stay
//               relative to the row's maximum, so large logits lose no precision.
//   MODE_LOSS:  one invocation per row: row loss A log(sum exp) - sum a (z - m) (0 for an ignored row; a mean's
//               divisor comes after the sum); stats.y becomes log(sum exp) = lse - m for the gradient pass.
//   MODE_GRAD:  one invocation per element of the chunk: the chunk's logits become their gradient, in place.
// Masked logits (-inf) and huge ones follow cross_entropy.comp's rules (weighted_shift, shift_from).
// Liger-Kernel's options, softcap and the z-loss, as in cross_entropy.comp (shaders/include/liger_options.glsl).
// Z_ROWS: MODE_LOSS also writes each row's z-loss alone.
// ROW_SCALE: MODE_GRAD scales each row's gradient by row_scale[row] (reduction='none': the upstream gradient).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "losses.glsl"

// Switches (WEIGHTED, NORM_BUFFER, FIRST, one MODE_*), bindings (B_*) and the push block (the block's rows and
// classes) come from the kernel's declaration in vkloss/ops/linear_cross_entropy.py. target, stats and row_loss are
// indexed by whole-batch row, the block by local row.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

layout(set = 0, binding = B_TARGET) readonly buffer Target { int target_index[]; };
#ifdef B_WEIGHT
layout(set = 0, binding = B_WEIGHT) readonly buffer Weight { float weight[]; };
#endif
#ifdef B_NORM
layout(set = 0, binding = B_NORM) readonly buffer Norm { float norm[]; };  // the counted rows' summed w_target
#endif

struct RowTarget { int index; bool counted; float keep; float spread; };

RowTarget row_target(uint row) {
    RowTarget r;
    r.index = target_index[row];
    bool ignored = p.ignore != 0u && r.index == p.ignore_index;
    r.counted = !ignored && r.index >= 0 && uint(r.index) < p.classes;
    r.keep = r.counted ? 1.0 - p.smoothing : 0.0;
    r.spread = r.counted ? p.smoothing / float(p.classes) : 0.0;
    return r;
}

#include "liger_options.glsl"  // capped(), cap_slope(), z_loss(), z_coefficient()

float coefficient(RowTarget r, uint c) {  // c: a class of the whole vocabulary
    float a = (int(c) == r.index ? r.keep : 0.0) + r.spread;
#if WEIGHTED
    a *= weight[c];
#endif
    return a;
}

#if MODE_STATS
#include "reduce.glsl"
layout(set = 0, binding = B_LOGITS) readonly buffer Logits { float logits[]; };  // [rows, chunk], bias not yet added
layout(set = 0, binding = B_BIAS) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = B_STATS) buffer Stats { vec4 stats[]; };  // per row: m, sum exp(z - m), sum a (z - m), A
void main() {
    uint local = workgroup_index();
    if (local >= p.rows) return;  // uniform across the workgroup, so barriers stay valid
    uint row = p.row_begin + local;
    RowTarget r = row_target(row);
    uint base = local * p.chunk;
    float m = NEG_INF;
    for (uint c = gl_LocalInvocationID.x; c < p.chunk; c += WG)
        m = nan_max(m, capped(logits[base + c] + bias[p.chunk_begin + c]));
    m = workgroup_max(m);
    vec4 sums = vec4(0.0);  // sum exp(z - m), sum a (z - m), sum a
    for (uint c = gl_LocalInvocationID.x; c < p.chunk; c += WG) {
        float shifted = shift_from(capped(logits[base + c] + bias[p.chunk_begin + c]), m);
        float a = coefficient(r, p.chunk_begin + c);
        sums += vec4(exp(shifted), weighted_shift(a, shifted), a, 0.0);
    }
    sums = workgroup_sum4(sums);
    if (gl_LocalInvocationID.x == 0) {
        vec4 chunk = vec4(m, sums.x, sums.y, sums.z);
#if FIRST
        stats[row] = chunk;
#else
        // re-base both on the larger max: sum a (z - top) = sum a (z - m) + A (m - top); 0 where A is 0
        vec4 running = stats[row];
        float top = nan_max(running.x, chunk.x);
        float down_running = shift_from(running.x, top), down_chunk = shift_from(chunk.x, top);
        stats[row] = vec4(top, running.y * exp(down_running) + chunk.y * exp(down_chunk),
                          running.z + weighted_shift(running.w, down_running) + chunk.z +
                          weighted_shift(chunk.w, down_chunk), running.w + chunk.w);
#endif
    }
}

#elif MODE_LOSS
layout(set = 0, binding = B_STATS) buffer Stats { vec4 stats[]; };
layout(set = 0, binding = B_ROW_LOSS) writeonly buffer RowLoss { float row_loss[]; };
#if Z_ROWS
layout(set = 0, binding = B_ROW_Z) writeonly buffer RowZ { float row_z[]; };
#endif
void main() {
    uint local = global_index();
    if (local >= p.rows) return;
    uint row = p.row_begin + local;
    RowTarget r = row_target(row);
    vec4 s = stats[row];
    float log_sum = log_accurate(s.y);  // lse - m
    // A (lse - m) - sum a (z - m): where A is 0 nothing counts (a mean's division by norm comes after the sum)
    float lse = s.x + log_sum, z = z_loss(r.counted, lse);
    row_loss[row] = (r.counted ? weighted_shift(s.w, log_sum) - s.z : 0.0) + z;
#if Z_ROWS
    row_z[row] = z;
#endif
    // the z-loss's gradient 2 z_scale lse softmax joins A's softmax A
    stats[row] = vec4(s.x, log_sum, s.z, s.w + z_coefficient(r.counted, lse));
}

#elif MODE_GRAD
layout(set = 0, binding = B_BIAS) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = B_STATS) readonly buffer Stats { vec4 stats[]; };  // .x: m, .y: lse - m, .w: A
layout(set = 0, binding = B_LOGITS) buffer Logits { float logits[]; };  // in: the chunk's logits; out: d/dz
#if ROW_SCALE
layout(set = 0, binding = B_ROW_SCALE) readonly buffer RowScale { float row_scale[]; };
#endif
void main() {
    uint i = global_index();
    if (i >= p.rows * p.chunk) return;
    uint local = i / p.chunk, c = i - local * p.chunk;
    RowTarget r = row_target(p.row_begin + local);
    vec4 s = stats[p.row_begin + local];
    float scale = p.scale;
#if NORM_BUFFER
    scale = norm[0] != 0.0 ? 1.0 / norm[0] : uintBitsToFloat(0x7f800000u);  // weights summing to 0: as PyTorch's 1/0
#endif
#if ROW_SCALE
    scale *= row_scale[p.row_begin + local];
#endif
    float z = capped(logits[i] + bias[p.chunk_begin + c]);
    float a = coefficient(r, p.chunk_begin + c);
    // softmax = exp((z - m) - (lse - m)): never z - lse, which rounds lse's small part away where |m| is large
    float softmax = exp(shift_from(z, s.x) - s.y);
    logits[i] = r.counted ? (softmax * s.w - a) * scale * cap_slope(z) : 0.0;
}
#else
#error "linear_cross_entropy.comp: define one MODE_*"
#endif
