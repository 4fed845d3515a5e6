#version 450
// Matrix products: out[m, n] = op(a)[m, k] @ op(b)[k, n] (+ out when accumulating), op = transpose where the flag
// says. One invocation per BLOCK x BLOCK block of out (BLOCK comes from vkloss/ops/matmul.py); it runs one loop
// iteration per k, so the caller splits a longer k into several dispatches (lavapipe's loop limit). Each operand starts
// at an element offset into its buffer, so a block of rows (a vocabulary chunk of a weight matrix) is an operand.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

// Bindings (B_*) and the push block come from the kernel's declaration in vkloss/ops/matmul.py.
layout(push_constant) uniform Push { PUSH_CONSTANTS } p;
layout(set = 0, binding = B_A) readonly buffer A { float a[]; };
layout(set = 0, binding = B_B) readonly buffer B { float b[]; };
layout(set = 0, binding = B_OUT) buffer Out { float y[]; };

float a_at(uint row, uint kk) { return p.trans_a != 0 ? a[p.a_offset + kk * p.m + row] : a[p.a_offset + row * p.k + kk]; }
float b_at(uint kk, uint col) { return p.trans_b != 0 ? b[p.b_offset + col * p.k + kk] : b[p.b_offset + kk * p.n + col]; }

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
            if (row < p.m && col < p.n) {
                uint o = p.out_offset + row * p.n + col;
                y[o] = p.accumulate != 0 ? y[o] + acc[r][c] : acc[r][c];
            }
        }
    }
}
#else
#ifndef BLOCK
#error "matmul.comp: define BLOCK, the side of the block of out one invocation computes"
#endif
// BLOCK^2 products for 2 BLOCK loads each step of k (one element per invocation did one for two). On lavapipe at
// 4096 x 2332 x 32: 1,093 ms one element each, 253 ms in 4 x 4 blocks, 144 in 8 x 8, 113 in 16 x 16. The block's
// rows and columns are clamped at the edges, and only the real ones written.
void main() {
    uint blocks_n = (p.n + BLOCK - 1) / BLOCK;
    uint i = global_index();
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
    [[unroll]] for (uint r = 0; r < BLOCK; ++r) {
        [[unroll]] for (uint c = 0; c < BLOCK; ++c) {
            if (row0 + r < p.m && col0 + c < p.n) {
                uint o = p.out_offset + (row0 + r) * p.n + col0 + c;
                y[o] = p.accumulate != 0 ? y[o] + acc[r][c] : acc[r][c];
            }
        }
    }
}
#endif
