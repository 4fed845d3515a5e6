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
//   a layer's bias gradient in the dispatch of its weight gradient;
// - PAIR: the invocations (workgroups, tiled) past those compute a second product, out2[m2, n2] = op(a)[m2, k2] @
//   op(b2)[k2, n2] with op from trans_a2 and trans_b2, no offsets and no epilogue: a layer's input gradient in the
//   same dispatch, a (the upstream gradient, masked) read by both.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/matmul.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;

// The product this invocation computes: p's, or (PAIR) the second one. Every function below reads its sizes here.
struct Product { uint m, n, k, k_begin, k_end, trans_a, trans_b, a_offset, b_offset, out_offset; };
Product q;
bool second;
void take_first() {  // main's first call
    q = Product(p.m, p.n, p.k, p.k_begin, p.k_end, p.trans_a, p.trans_b, p.a_offset, p.b_offset, p.out_offset);
    second = false;
}
#if PAIR
void take_second() {
    q = Product(p.m2, p.n2, p.k2, 0u, p.k2, p.trans_a2, p.trans_b2, 0u, 0u, 0u);
    second = true;
}

// The first product's share of the dispatch is a unit (a workgroup, or an invocation) per `side` x `side` part of
// out, then `sums` units of bias sums: index i within it stays, i past it is the second product's i - share.
uint pair_index(uint i, uint side, uint sums) {
    uint share = ((q.m + side - 1) / side) * ((q.n + side - 1) / side) + sums;
    if (i < share) return i;
    take_second();
    return i - share;
}
#endif
#if VEC4
#include "access.glsl"
layout(set = 0, binding = B_A) readonly buffer A { STORED a_data[]; };
layout(set = 0, binding = B_B) readonly buffer B { STORED b_data[]; };
#if MASK
layout(set = 0, binding = B_MASK) readonly buffer Mask { STORED mask_data[]; };
#endif
#if PAIR
layout(set = 0, binding = B_B2) readonly buffer B2 { STORED b2_data[]; };
#endif
#else
layout(set = 0, binding = B_A) readonly buffer A { float a[]; };
layout(set = 0, binding = B_B) readonly buffer B { float b[]; };
#if MASK
layout(set = 0, binding = B_MASK) readonly buffer Mask { float mask[]; };
#endif
#if PAIR
layout(set = 0, binding = B_B2) readonly buffer B2 { float b2[]; };
#endif

float a_at(uint row, uint kk) {
    uint at = q.trans_a != 0 ? q.a_offset + kk * q.m + row : q.a_offset + row * q.k + kk;
#if MASK
    return mask[at] <= 0.0 ? 0.0 : a[at];
#else
    return a[at];
#endif
}
float b_at(uint kk, uint col) {
    uint at = q.trans_b != 0 ? q.b_offset + col * q.k + kk : q.b_offset + kk * q.n + col;
#if PAIR
    if (second) return b2[at];
#endif
    return b[at];
}
#endif
layout(set = 0, binding = B_OUT) buffer Out { float y[]; };
#if PAIR
layout(set = 0, binding = B_OUT2) writeonly buffer Out2 { float y2[]; };
#endif
#if BIAS
layout(set = 0, binding = B_BIAS) readonly buffer Bias { float bias[]; };
#endif
#if BIAS_SUM
layout(set = 0, binding = B_BIAS_GRAD) buffer BiasGrad { float bias_grad[]; };
#endif

// out[row, column] (+)= value, through the epilogue.
void store(uint row, uint col, float value) {
    uint o = q.out_offset + row * q.n + col;
#if PAIR
    if (second) {  // no epilogue
        y2[o] = value;
        return;
    }
#endif
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
    take_first();
    uint t = workgroup_index();
#if PAIR
    t = pair_index(t, TILE, BIAS_SUM != 0 ? (q.m + 255u) / 256u : 0u);  // uniform across the workgroup
#endif
    uint tiles_n = (q.n + TILE - 1) / TILE;
#if BIAS_SUM
    uint tiles = ((q.m + TILE - 1) / TILE) * tiles_n;
    if (!second && t >= tiles) {  // workgroups past the product's tiles: a row sum an invocation (uniform: no barrier)
        uint row = (t - tiles) * 256u + gl_LocalInvocationID.x;
        if (row < q.m) {
            float s = 0.0;
            for (uint kk = q.k_begin; kk < q.k_end; ++kk) s += a_at(row, kk);
            store_bias_sum(row, s);
        }
        return;
    }
#endif
    uint row0 = (t / tiles_n) * TILE, col0 = (t % tiles_n) * TILE;
    if (row0 >= q.m) return;  // uniform across the workgroup
    uint lid = gl_LocalInvocationID.x;
    uint block_row = 4u * (lid / 16u), block_col = 4u * (lid % 16u);  // WG is 256: a 16 x 16 grid of 4 x 4 blocks
    float acc[4][4];
    [[unroll]] for (uint r = 0; r < 4; ++r) [[unroll]] for (uint c = 0; c < 4; ++c) acc[r][c] = 0.0;
    for (uint k0 = q.k_begin; k0 < q.k_end; k0 += DEPTH) {
        [[unroll]] for (uint e = lid; e < DEPTH * TILE; e += 256) {
            uvec2 at = slice_position(e, q.trans_a == 0);
            a_tile[at.x][at.y] = k0 + at.x < q.k_end && row0 + at.y < q.m ? a_at(row0 + at.y, k0 + at.x) : 0.0;
            uvec2 bt = slice_position(e, q.trans_b != 0);
            b_tile[bt.x][bt.y] = k0 + bt.x < q.k_end && col0 + bt.y < q.n ? b_at(k0 + bt.x, col0 + bt.y) : 0.0;
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
            if (row < q.m && col < q.n) store(row, col, acc[r][c]);
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

// Access `at` of operand a (a_side) or b (b2 for the second product), as STEPS floats in `values`.
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
#if PAIR
        if (second) {
            LOAD_SPLIT(b2_data, at, parts);
        } else {
            LOAD_SPLIT(b_data, at, parts);
        }
#else
        LOAD_SPLIT(b_data, at, parts);
#endif
    }
    [[unroll]] for (uint h = 0; h < PER_LOAD; ++h) [[unroll]] for (uint q = 0; q < 4; ++q) values[4 * h + q] = parts[h][q];
}

#if BIAS_SUM
// Past the product's blocks, invocation i sums rows of op(a) over k: one row where a is stored with k contiguous (an
// access is STEPS steps of k), else STEPS rows (an access is STEPS rows at one step of k).
void bias_sum(uint i, bool a_k_inner) {
    float values[STEPS];
    if (a_k_inner) {
        if (i >= q.m) return;
        float s = 0.0;
        for (uint k0 = q.k_begin; k0 < q.k_end; k0 += STEPS) {
            load_access(true, (q.a_offset + i * q.k + k0) / STEPS, values);
            [[unroll]] for (uint q = 0; q < STEPS; ++q) s += values[q];
        }
        store_bias_sum(i, s);
    } else {
        uint row0 = i * STEPS;
        if (row0 >= q.m) return;
        float s[STEPS];
        [[unroll]] for (uint q = 0; q < STEPS; ++q) s[q] = 0.0;
        for (uint kk = q.k_begin; kk < q.k_end; ++kk) {
            load_access(true, (q.a_offset + kk * q.m + row0) / STEPS, values);
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
                if (k0 + j < q.k_end) {  // k need not be a multiple of STEPS here: zero past k_end
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
    take_first();
    uint i = global_index();
#if PAIR
    i = pair_index(i, BLOCK, BIAS_SUM != 0 ? (q.trans_a == 0 ? q.m : q.m / STEPS) : 0u);
#endif
    uint blocks_n = (q.n + BLOCK - 1) / BLOCK;
    bool a_k_inner = q.trans_a == 0, b_k_inner = q.trans_b != 0;
#if BIAS_SUM
    uint blocks = ((q.m + BLOCK - 1) / BLOCK) * blocks_n;
    if (!second && i >= blocks) {
        bias_sum(i - blocks, a_k_inner);
        return;
    }
#endif
    uint row0 = (i / blocks_n) * BLOCK, col0 = (i % blocks_n) * BLOCK;
    if (row0 >= q.m) return;
    float acc[BLOCK][BLOCK];  // acc[r][c]: out[row0 + r][col0 + c]
    [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] = 0.0;
    for (uint k0 = q.k_begin; k0 < q.k_end; k0 += STEPS) {
        float av[STEPS][BLOCK], bv[STEPS][BLOCK];
        load_operand(a_k_inner, true, q.a_offset, a_k_inner ? q.k : q.m, q.m, row0, k0, av);
        load_operand(b_k_inner, false, q.b_offset, b_k_inner ? q.k : q.n, q.n, col0, k0, bv);
        [[unroll]] for (uint j = 0; j < STEPS; ++j)
            [[unroll]] for (uint r = 0; r < BLOCK; ++r)
                [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] += av[j][r] * bv[j][c];
    }
    [[unroll]] for (uint r = 0; r < BLOCK; ++r)
        [[unroll]] for (uint c = 0; c < BLOCK; ++c)
            if (row0 + r < q.m && col0 + c < q.n) store(row0 + r, col0 + c, acc[r][c]);
}
#else
#ifndef BLOCK
#error "matmul.comp: define BLOCK, the side of the block of out one invocation computes"
#endif
// BLOCK^2 products for 2 BLOCK loads each step of k (one element per invocation did one for two): on lavapipe
// larger blocks ran several times faster (docs/performance.md, "Kernel choices"). The block's rows and columns are
// clamped at the edges, and only the real ones written.
void main() {
    take_first();
    uint i = global_index();
#if PAIR
    i = pair_index(i, BLOCK, BIAS_SUM != 0 ? q.m : 0u);
#endif
    uint blocks_n = (q.n + BLOCK - 1) / BLOCK;
#if BIAS_SUM
    uint blocks = ((q.m + BLOCK - 1) / BLOCK) * blocks_n;
    if (!second && i >= blocks) {  // one row sum per invocation past the product's blocks
        uint row = i - blocks;
        if (row < q.m) {
            float s = 0.0;
            for (uint kk = q.k_begin; kk < q.k_end; ++kk) s += a_at(row, kk);
            store_bias_sum(row, s);
        }
        return;
    }
#endif
    uint row0 = (i / blocks_n) * BLOCK, col0 = (i % blocks_n) * BLOCK;
    if (row0 >= q.m) return;
    uint rows[BLOCK], cols[BLOCK];
    [[unroll]] for (uint j = 0; j < BLOCK; ++j) {
        rows[j] = min(row0 + j, q.m - 1);
        cols[j] = min(col0 + j, q.n - 1);
    }
    float acc[BLOCK][BLOCK];  // acc[r][c]: out[row0 + r][col0 + c]
    [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] = 0.0;
    for (uint kk = q.k_begin; kk < q.k_end; ++kk) {
        float av[BLOCK], bv[BLOCK];
        [[unroll]] for (uint j = 0; j < BLOCK; ++j) {
            av[j] = a_at(rows[j], kk);
            bv[j] = b_at(kk, cols[j]);
        }
        [[unroll]] for (uint r = 0; r < BLOCK; ++r) [[unroll]] for (uint c = 0; c < BLOCK; ++c) acc[r][c] += av[r] * bv[c];
    }
    [[unroll]] for (uint r = 0; r < BLOCK; ++r)
        [[unroll]] for (uint c = 0; c < BLOCK; ++c)
            if (row0 + r < q.m && col0 + c < q.n) store(row0 + r, col0 + c, acc[r][c]);
}
#endif
