"""The exceptions vkloss raises. Each also inherits the built-in one a user would catch."""


class VkLossError(Exception):
    """Base class of every vkloss error."""


class NoVulkanDeviceError(VkLossError, RuntimeError):
    """No Vulkan loader or no Vulkan device on this machine."""


class ShaderCompileError(VkLossError, RuntimeError):
    """glslangValidator rejected a shader; the message names the file and line."""


class ShaderCheckError(VkLossError, RuntimeError):
    """A compiled shader failed spirv-val or no longer matches its source."""


class DeviceMemoryError(VkLossError, MemoryError):
    """A buffer larger than the device can bind or allocate."""


class CaptureError(VkLossError, RuntimeError):
    """Something a captured step cannot do (vkloss/capture.py): read a value to the host inside it, accumulate into
    a gradient made before it, ..."""
