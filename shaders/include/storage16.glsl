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

// With access.glsl and VEC4: one access of PER_LOAD vec4s of 16-bit values, a PACKED_ACCESS of words (a uvec2 of
// four values; with WIDE a uvec4 of eight), read by LOAD_PACKED(array, i, v) into vec4 v[PER_LOAD] and written by
// STORE_PACKED(array, i, v) from them.
#if defined(ACCESS_GLSL) && VEC4
#if WIDE
#define PACKED_ACCESS uvec4
#define LOAD_PACKED(array, i, v) { uvec4 words = (array)[i]; v[0] = vec4(unpack_pair16(words.x), \
    unpack_pair16(words.y)); v[1] = vec4(unpack_pair16(words.z), unpack_pair16(words.w)); }
#define STORE_PACKED(array, i, v) (array)[i] = uvec4(pack_pair16(v[0].xy), pack_pair16(v[0].zw), \
    pack_pair16(v[1].xy), pack_pair16(v[1].zw))
#else
#define PACKED_ACCESS uvec2
#define LOAD_PACKED(array, i, v) { uvec2 words = (array)[i]; v[0] = vec4(unpack_pair16(words.x), \
    unpack_pair16(words.y)); }
#define STORE_PACKED(array, i, v) (array)[i] = uvec2(pack_pair16(v[0].xy), pack_pair16(v[0].zw))
#endif
#endif

#endif
