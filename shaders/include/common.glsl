// Shared by every vkloss kernel: workgroup size as a specialization constant, and the flat index of an
// invocation in a 2-D grid of workgroups (every device caps a dispatch at 65535 workgroups per dimension,
// so large tensors spread over y; see vkloss/engine.py grid()).
#extension GL_EXT_control_flow_attributes : enable
// Subgroup operations are declared to SPIR-V only where a kernel uses them (reduce.glsl's SUBGROUP_REDUCE), and
// vkloss chooses those kernels only on devices that support them.
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_shuffle : enable

// Variant switches default to off, so a variant names only the ones it sets.
#ifndef VEC4
#define VEC4 0
#endif
#ifndef WIDE
#define WIDE 0
#endif
#ifndef WRITE_GRAD
#define WRITE_GRAD 0
#endif

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;

uint workgroup_index() {
    return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
}

uint global_index() {
    return workgroup_index() * WG + gl_LocalInvocationID.x;
}
