"""vkloss: loss functions and tape autodiff as Vulkan compute shaders, dispatched through Kompute."""
from .device import DeviceInfo, devices
from .errors import DeviceMemoryError, NoVulkanDeviceError, ShaderCheckError, ShaderCompileError, VkLossError
from . import optim
from .gradcheck import GradcheckError, gradcheck
from .graph import Graph
from .registry import FusedResult, register_op
from .tensor import Tensor

__all__ = ["Graph", "Tensor", "devices", "optim", "register_op", "gradcheck", "GradcheckError", "FusedResult", "DeviceInfo", "VkLossError", "NoVulkanDeviceError", "ShaderCompileError",
           "ShaderCheckError", "DeviceMemoryError"]
__version__ = "0.1.0"
