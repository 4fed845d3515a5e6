#version 450
// Matrix products: out[m, n] = op(a)[m, k] @ op(b)[k, n] (+ out when accumulating), op = transpose where the flag
// says. One invocation per BLOCK x BLOCK block of out (BLOCK comes from vkloss/ops/matmul.py); it runs one loop
// iteration per k, so the caller splits a longer k into several dispatches (lavapipe's loop limit). Each operand starts
// at an element offset into its buffer, so a block of rows (a vocabulary chunk of a weight matrix) is an operand.
//
// A linear layer's parts, each a switch (vkloss/ops/matmul.py, vkloss/ops/linear.py):
// - BIAS, and p.relu: the epilogue out = relu(product + bias[column]), a layer's forward in one dispatch (relu a push
//   constant, not a switch: with or without it, one pipeline to compile, 33 ms of lavapipe's for the wide variant);
// - MASK: operand a read as (mask <= 0 ? 0 : a), mask stored as a is: the gradient through a relu whose output is
//   mask (PyTorch's threshold_backward on the result);
// - BIAS_SUM: invocations past the product's write bias_grad[row] = the sum over k of op(a)[row, k] (masked too):
//   a layer's bias gradient in the dispatch of its weight gradient.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/matmul.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
#if VEC4
#include "access.glsl"
layout(set = 0, binding = B_A) readonly buffer A { STORED a_data[]; };
layout(set = 0, binding = B_B) readonly buffer B { STORED b_data[]; };
#if MASK
layout(set = 0, binding = B_MASK) readonly buffer Mask { STORED mask_data[]; };
#endif
#else
layout(set = 0, binding = B_A) readonly buffer A { float a[]; };
layout(set = 0, binding = B_B) readonly buffer B { float b[]; };
#if MASK
layout(set = 0, binding = B_MASK) readonly buffer Mask { float mask[]; };
#endif

float a_at(uint row, uint kk) {
    uint at = p.trans_a != 0 ? p.a_offset + kk * p.m + row : p.a_offset + row * p.k + kk;
#if MASK
    return mask[at] <= 0.0 ? 0.0 : a[at];
#else
    return a[at];
#endif
}
float b_at(uint kk, uint col) { return p.trans_b != 0 ? b[p.b_offset + col * p.k + kk] : b[p.b_offset + kk * p.n + col]; }
#endif
layout(set = 0, binding = B_OUT) buffer Out { float y[]; };
#if BIAS
layout(set = 0, binding = B_BIAS) readonly buffer Bias { float bias[]; };
#endif
#if BIAS_SUM
layout(set = 0, binding = B_BIAS_GRAD) buffer BiasGrad { float bias_grad[]; };
#endif

// out[row, column] (+)= value, through the epilogue.
void store(uint row, uint col, float value) {
    uint o = p.out_offset + row * p.n + col;
    if (p.accumulate != 0) value += y[o];
#if BIAS
    value += bias[col];
#endif
    if (p.relu != 0) value = value < 0.0 ? 0.0 : value;  // NaN stays NaN, as PyTorch's relu
    y[o] = value;
}

#if BIAS_SUM
void store_bias_sum(uint row, float value) {
    bias_grad[row] = p.accumulate != 0 ? bias_grad[row] + value : value;
}
#endif

#if TILED
// A workgroup of 256 computes a TILE x TILE tile of out, each invocation a 4 x 4 block of it, from DEPTH-deep slices
// of op(a) and op(b) staged in shared memory: an operand element is read from memory once per tile instead of once
// per block, and neighbouring invocations load neighbouring addresses whichever way the operand is stored. For GPUs
// (vkloss/ops/matmul.py use_tiles): lavapipe runs 256-wide workgroups as coroutines switched at every barrier.
#define TILE 64
#define DEPTH 16
shared float a_tile[DEPTH][TILE + 1];  // [k][row of out], padded against bank conflicts
shared float b_tile[DEPTH][TILE + 1];  // [k][column of out]

// Element e of a DEPTH x TILE slice, numbered so that consecutive e are consecutive in memory: along k where the
// operand is stored with k contiguous (`k_inner`), else along the tile.
uvec2 slice_position(uint e, bool k_inner) {
    return k_inner ? uvec2(e % DEPTH, e / DEPTH) : uvec2(e / TILE, e % TILE);  // (k, row or column)
}

void main() {
    uint tiles_n = (p.n + TILE - 1) / TILE;
    uint t = workgroup_index();
#if BIAS_SUM
    uint tiles = ((p.m + TILE - 1) / TILE) * tiles_n;
    if (t >= tiles) {  // the workgroups past the product's tiles: one row sum per invocation (uniform: no barrier)
        uint row = (t - tiles) * 256u + gl_LocalInvocationID.x;
        if (row < p.m) {
            float s = 0.0;
            for (uint kk = p.k_begin; kk < p.k_end; ++kk) s += a_at(row, kk);
            store_bias_sum(row, s);
        }
        return;
    }
#endif
    uint row0 = (t / tiles_n) * TILE, col0 = (t % tiles_n) * TILE;
    if (row0 >= p.m) return;  // uniform across the workgroup
    uint lid = gl_LocalInvocationID.x;
    uint block_row = 4u * (lid / 16u), block_col = 4u * (lid % 16u);  // WG is 256: a 16 x 16 grid of 4 x 4 blocks
    float acc[4][4];
    [[unroll]] for (uint r = 0; r < 4; ++r) [[unroll]] for (uint c = 0; c < 4; ++c) acc[r][c] = 0.0;
    for (uint k0 = p.k_begin; k0 < p.k_end; k0 += DEPTH) {
        [[unroll]] for (uint e = lid; e < DEPTH * TILE; e += 256) {
            uvec2 at = slice_position(e, p.trans_a == 0);
            a_tile[at.x][at.y] = k0 + at.x < p.k_end && row0 + at.y < p.m ? a_at(row0 + at.y, k0 + at.x) : 0.0;
            uvec2 bt = slice_position(e, p.trans_b != 0);
            b_tile[bt.x][bt.y] = k0 + bt.x < p.k_end && col0 + bt.y < p.n ? b_at(k0 + bt.x, col0 + bt.y) : 0.0;
        }
        barrier();
        [[unroll]] for (uint kk = 0; kk < DEPTH; ++kk) {
            float av[4], bv[4];
            [[unroll]] for (uint j = 0; j < 4; ++j) {
                av[j] = a_tile[kk][block_row + j];
                bv[j] = b_tile[kk][block_col + j];
            }
            [[unroll]] for (uint r = 0; r < 4; ++r) [[unroll]] for (uint c = 0; c < 4; ++c) acc[r][c] += av[r] * bv[c];
        }
        barrier();
    }
    [[unroll]] for (uint r = 0; r < 4; ++r) {
        [[unroll]] for (uint c = 0; c < 4; ++c) {
            uint row = row0 + block_row + r, col = col0 + block_col + c;
            if (row < p.m && col < p.n) store(row, col, acc[r][c]);
        }
    }
}
#elif VEC4
// Register blocks as below, each operand read STEPS = ACCESS_WIDTH floats an access (access.glsl: a vec4, or with WIDE
// eight; vkloss/ops/matmul.py checks that each operand's offset, and its row length along the way it is stored, are
// multiples of that): STEPS steps of k per iteration. An operand stored with k contiguous gives one access (STEPS
// values of k) per row or column of the block; one stored along the block gives BLOCK / STEPS accesses (its rows or
// columns) per step of k. Either way BLOCK accesses per operand per STEPS steps of k, where the scalar kernel makes
// STEPS BLOCK: on lavapipe, whose cost is per access, that is what matters (docs/performance.md, "Kernel choices").
#define STEPS ACCESS_WIDTH
#if BLOCK % 8 != 0
#error "matmul.comp: the VEC4 kernel reads a block's rows or columns as whole accesses of 4 or 8"
#endif

// Access `at` of operand a (a_side) or b, as STEPS floats in `values`.
void load_access(bool a_side, uint at, out float values[STEPS]) {
    ELEMENT parts[PER_LOAD];
    if (a_side) {
        LOAD_SPLIT(a_data, at, parts);
#if MASK
        ELEMENT masks[PER_LOAD];
        LOAD_SPLIT(mask_data, at, masks);
        [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) parts[h] = mix(parts[h], ELEMENT(0.0), lessThanEqual(masks[h], ELEMENT(0.0)));
#endif
    } else {
        LOAD_SPLIT(b_data, at, parts);
    }
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) [[unroll]] for (uint q = 0; q < 4; ++q) values[4 * h + q] = parts[h][q];
}

#if BIAS_SUM
// Past the product's blocks, invocation i sums rows of op(a) over k: one row where a is stored with k contiguous (an
// access is STEPS steps of k), else STEPS rows (an access is STEPS rows at one step of k).
void bias_sum(uint i, bool a_k_inner) {
    float values[STEPS];
    if (a_k_inner) {
        if (i >= p.m) return;
        float s = 0.0;
        for (uint k0 = p.k_begin; k0 < p.k_end; k0 += STEPS) {
            load_access(true, (p.a_offset + i * p.k + k0) / STEPS, values);
            [[unroll]] for (uint q = 0; q < STEPS; ++q) s += values[q];
        }
        store_bias_sum(i, s);
    } else {
        uint row0 = i * STEPS;
        if (row0 >= p.m) return;
        float s[STEPS];
        [[unroll]] for (uint q = 0; q < STEPS; ++q) s[q] = 0.0;
        for (uint kk = p.k_begin; kk < p.k_end; ++kk) {
            load_access(true, (p.a_offset + kk * p.m + row0) / STEPS, values);
            [[unroll]] for (uint q = 0; q < STEPS; ++q) s[q] += values[q];
        }
        [[unroll]] for (uint q = 0; q < STEPS; ++q) store_bias_sum(row0 + q, s[q]);
    }
}
#endif

// The block's values of one operand for steps k0 .. k0 + STEPS - 1: v[j][r], row (or column) r of the block at step
// k0 + j. stride: the operand's row length (k where k is contiguous, else m or n); lines: m or n; first: row0 or col0.
void load_operand(bool k_inner, bool a_side, uint offset, uint stride, uint lines, uint first, uint k0,
                  out float v[STEPS][BLOCK]) {
    float values[STEPS];
    if (k_inner) {
        [[unroll]] for (uint r = 0; r < BLOCK; ++r) {
            // k0 .. k0 + STEPS - 1 (k % STEPS == 0: never past the row)
            load_access(a_side, (offset + min(first + r, lines - 1) * stride + k0) / STEPS, values);
            [[unroll]] for (uint j = 0; j < STEPS; ++j) v[j][r] = values[j];
        }
    } else {
        [[unroll]] for (uint j = 0; j < STEPS; ++j) {
            [[unroll]] for (uint s = 0; s < BLOCK / STEPS; ++s) {
                // lines % STEPS == 0, so a part past the end repeats the last access: computed, never written
                uint line = min(first + s * STEPS, lines - STEPS);
                if (k0 + j < p.k_end) {  // k need not be a multiple of STEPS here: zero past k_end
                    load_access(a_side, (offset + (k0 + j) * stride + line) / STEPS, values);
                } else {
                    [[unroll]] for (uint q = 0; q < STEPS; ++q) values[q] = 0.0;
                }
                [[unroll]] for (uint q = 0; q < STEPS; ++q) v[j][s * STEPS + q] = values[q];
            }
        }
    }
}

void main() {
    uint blocks_n = (p.n + BLOCK - 1) / BLOCK;
    uint i = global_index();
    bool a_k_inner = p.trans_a == 0, b_k_inner = p.trans_b != 0;
#if BIAS_SUM
    uint blocks = ((p.m + BLOCK - 1) / BLOCK) * blocks_n;
    if (i >= blocks) {
        bias_sum(i - blocks, a_k_inner);
        return;
    }
#endif
    uint row0 = (i / blocks_n) * BLOCK, col0 = (i % blocks_n) * BLOCK;
    if (row0 >= p.m) return;
    float acc[BLOCK][BLOCK];  // acc[r][c]: out[row0 + r][col0 + c]
    [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] = 0.0;
    for (uint k0 = p.k_begin; k0 < p.k_end; k0 += STEPS) {
        float av[STEPS][BLOCK], bv[STEPS][BLOCK];
        load_operand(a_k_inner, true, p.a_offset, a_k_inner ? p.k : p.m, p.m, row0, k0, av);
        load_operand(b_k_inner, false, p.b_offset, b_k_inner ? p.k : p.n, p.n, col0, k0, bv);
        [[unroll]] for (uint j = 0; j < STEPS; ++j)
            [[unroll]] for (uint r = 0; r < BLOCK; ++r)
                [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] += av[j][r] * bv[j][c];
    }
    [[unroll]] for (uint r = 0; r < BLOCK; ++r)
        [[unroll]] for (uint c = 0; c < BLOCK; ++c)
            if (row0 + r < p.m && col0 + c < p.n) store(row0 + r, col0 + c, acc[r][c]);
}
#else
#ifndef BLOCK
#error "matmul.comp: define BLOCK, the side of the block of out one invocation computes"
#endif
// BLOCK^2 products for 2 BLOCK loads each step of k (one element per invocation did one for two): on lavapipe
// larger blocks ran several times faster (docs/performance.md, "Kernel choices"). The block's rows and columns are
// clamped at the edges, and only the real ones written.
void main() {
    uint blocks_n = (p.n + BLOCK - 1) / BLOCK;
    uint i = global_index();
#if BIAS_SUM
    uint blocks = ((p.m + BLOCK - 1) / BLOCK) * blocks_n;
    if (i >= blocks) {  // one row sum per invocation past the product's blocks
        uint row = i - blocks;
        if (row < p.m) {
            float s = 0.0;
            for (uint kk = p.k_begin; kk < p.k_end; ++kk) s += a_at(row, kk);
            store_bias_sum(row, s);
        }
        return;
    }
#endif
    uint row0 = (i / blocks_n) * BLOCK, col0 = (i % blocks_n) * BLOCK;
    if (row0 >= p.m) return;
    uint rows[BLOCK], cols[BLOCK];
    [[unroll]] for (uint j = 0; j < BLOCK; ++j) {
        rows[j] = min(row0 + j, p.m - 1);
        cols[j] = min(col0 + j, p.n - 1);
    }
    float acc[BLOCK][BLOCK];  // acc[r][c]: out[row0 + r][col0 + c]
    [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] = 0.0;
    for (uint kk = p.k_begin; kk < p.k_end; ++kk) {
        float av[BLOCK], bv[BLOCK];
        [[unroll]] for (uint j = 0; j < BLOCK; ++j) {
            av[j] = a_at(rows[j], kk);
            bv[j] = b_at(kk, cols[j]);
        }
        [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] += av[r] * bv[c];
    }
    [[unroll]] for (uint r = 0; r < BLOCK; ++r)
        [[unroll]] for (uint c = 0; c < BLOCK; ++c)
            if (row0 + r < p.m && col0 + c < p.n) store(row0 + r, col0 + c, acc[r][c]);
}
#endif
