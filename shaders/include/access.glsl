// One access of a float32 buffer, as the VEC4 and WIDE switches choose it (vkloss/registry.py
// ForwardContext.access_width picks them from the sizes and the device):
//   neither: one float;  VEC4: a vec4;  VEC4 and WIDE: eight floats in one 32-byte u64vec4 (wide.glsl), as two vec4s.
// ELEMENT: what the maths runs on (float or vec4); PER_LOAD: ELEMENTs per access; STORED: the buffer's element type;
// ACCESS_WIDTH: float32 values per access. LOAD_SPLIT(array, i, v) reads access i into ELEMENT v[PER_LOAD];
// STORE_JOINED(array, i, v) writes it. HSUM(e): the sum of an ELEMENT's components.
#ifndef ACCESS_GLSL
#define ACCESS_GLSL
#if VEC4
#define ELEMENT vec4
#define HSUM(v) dot(v, vec4(1.0))
#else
#define ELEMENT float
#define HSUM(v) (v)
#endif
#if WIDE
#if !VEC4
#error "access.glsl: WIDE (eight floats an access) is two vec4s, so it needs VEC4"
#endif
#include "wide.glsl"
#define PER_LOAD 2
#define STORED u64vec4
#define LOAD_SPLIT(array, i, v) unpack8(array[i], v[0], v[1])
#define STORE_JOINED(array, i, v) array[i] = pack8(v[0], v[1])
#else
#define PER_LOAD 1
#define STORED ELEMENT
#define LOAD_SPLIT(array, i, v) v[0] = array[i]
#define STORE_JOINED(array, i, v) array[i] = v[0]
#endif
#define ACCESS_WIDTH (VEC4 != 0 ? 4u * PER_LOAD : 1u)
#endif
