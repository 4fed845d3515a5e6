"""vkloss: loss functions and tape autodiff as Vulkan compute shaders, dispatched through Kompute."""
from .device import DeviceInfo, devices
from .errors import DeviceMemoryError, NoVulkanDeviceError, ShaderCheckError, ShaderCompileError, VkLossError
from . import optim
from .graph import Graph
from .tensor import Tensor

__all__ = ["Graph", "Tensor", "devices", "optim", "DeviceInfo", "VkLossError", "NoVulkanDeviceError", "ShaderCompileError",
           "ShaderCheckError", "DeviceMemoryError"]
__version__ = "0.1.0"
