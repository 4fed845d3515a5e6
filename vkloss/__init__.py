"""vkloss: loss functions and tape autodiff as Vulkan compute shaders, dispatched through Kompute."""
from .device import DeviceInfo, devices
from .errors import (CaptureError, DeviceMemoryError, NoVulkanDeviceError, ShaderCheckError, ShaderCompileError,
                     VkLossError)
from . import optim
from .checkpoint import load, save
from .gradcheck import GradcheckError, gradcheck
from .graph import Graph
from .implementations import Backward, Composed, ForwardKernel, FusedKernel, UserShader, View
from .registry import ForwardContext, register_op, unregister_op
from .tensor import Tensor
from . import ops  # noqa: E402,F401  (registers the built-in ops, after Graph exists to take their methods)
from . import distributed  # noqa: E402  (vkloss.distributed: imports PyTorch only when used)

__all__ = ["Graph", "Tensor", "devices", "optim", "distributed", "register_op", "unregister_op", "Backward", "ForwardContext",
           "FusedKernel", "ForwardKernel", "Composed", "View", "UserShader",
           "gradcheck", "GradcheckError", "DeviceInfo", "VkLossError", "NoVulkanDeviceError", "ShaderCompileError",
           "ShaderCheckError", "DeviceMemoryError", "CaptureError", "save", "load"]
__version__ = "0.1.0"
