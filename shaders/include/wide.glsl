// WIDE: eight float32 values moved by one 32-byte access (a u64vec4, shaderInt64), as two vec4s.
// For CPU implementations: lavapipe (Mesa 22) turns every storage-buffer access into a loop over the SIMD lanes with
// a branch per lane and per component, whatever the width of a component, so a u64vec4 moves twice the bytes of a
// vec4 per lane iteration, and comes near the device's own buffer copy (docs/performance.md, "Kernel choices"). GPUs
// gain nothing over a vec4 (16 bytes is already the widest access a lane makes), so vkloss picks WIDE only on CPU
// devices (vkloss/launch.py wide_loads).
#ifndef WIDE_GLSL
#define WIDE_GLSL
#extension GL_ARB_gpu_shader_int64 : require

void unpack8(u64vec4 raw, out vec4 low, out vec4 high) {
    low = uintBitsToFloat(uvec4(unpackUint2x32(raw.x), unpackUint2x32(raw.y)));
    high = uintBitsToFloat(uvec4(unpackUint2x32(raw.z), unpackUint2x32(raw.w)));
}

u64vec4 pack8(vec4 low, vec4 high) {
    uvec4 l = floatBitsToUint(low), h = floatBitsToUint(high);
    return u64vec4(packUint2x32(l.xy), packUint2x32(l.zw), packUint2x32(h.xy), packUint2x32(h.zw));
}
#endif
