// 16-bit floats stored two to a 32-bit word (element 2k in the low half, 2k + 1 in the high half), read and written
// as whole words, so no device needs the 16-bit storage feature and no two invocations write one word.
// STORAGE_F16: IEEE half precision (unpackHalf2x16 / packHalf2x16). STORAGE_BF16: bfloat16, the high half of a
// float32, rounded to nearest even when written.
#ifndef STORAGE16_GLSL
#define STORAGE16_GLSL

vec2 unpack_pair16(uint word) {
#if STORAGE_F16
    return unpackHalf2x16(word);
#else
    return vec2(uintBitsToFloat(word << 16), uintBitsToFloat(word & 0xffff0000u));
#endif
}

uint bfloat16_bits(float v) {
    uint u = floatBitsToUint(v);
    if (isnan(v)) return (u >> 16) | 0x40u;  // stays a (quiet) NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

uint pack_pair16(vec2 v) {
#if STORAGE_F16
    return packHalf2x16(v);
#else
    return bfloat16_bits(v.x) | (bfloat16_bits(v.y) << 16);
#endif
}

// element i of a packed array
#define LOAD16(words, i) (unpack_pair16((words)[(i) >> 1])[(i) & 1u])

#endif
