"""Patch kp 0.9.0's source (the PyPI sdist, sha256 in tools/kp_build.py) before building it.

Usage: python tools/kp_patch.py <unpacked kp-0.9.0 directory>   (tools/kp_build.py applies it as vkloss builds)

Each change is an exact text replacement that must match once; anything else fails the build, so a different kp
source can never be patched half-way. vkloss checks `kp.vkloss_patch == PATCH_LEVEL` at import.

1. One VkFence per Sequence, reset before each submission and destroyed with the Sequence. Stock kp creates and
   destroys a fence on every eval: 415 to 476 us on an NVIDIA H100 (driver 580), against 44 us for a whole
   submit-and-wait with a reused fence.
2. Sequences' command pools get VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, so a kept Sequence can be cleared
   and recorded again (without it vkBeginCommandBuffer on an executed buffer is VUID-vkBeginCommandBuffer-00050).
3. The Python binding's `Sequence.eval_async()` called the synchronous `eval()`; it now calls `evalAsync()`, which
   submits what is recorded, without waiting and without re-recording (replay).
4. `kp.OpMemoryBarrier(tensors, src_access, dst_access, src_stage, dst_stage)`, with Vulkan's flag bits as ints,
   on the tensors' device buffers: the C++ op exists, the binding did not. vkloss records a real
   compute-to-compute barrier between dependent dispatches instead of splitting the work into submissions.
5. Storage (device-only) tensors' buffers may be copied to and from (TRANSFER_SRC and TRANSFER_DST usage), so
   `OpTensorCopy` moves data between them and host-visible staging tensors; stock kp gives them no way in or out.
6. A failed vkAllocateMemory raises (RuntimeError in Python) instead of leaving a buffer without memory, which
   crashed later.
7. `kp.vkloss_patch`, the level applied, so vkloss can tell a patched build from a stock one.
8. (Up to level 5: kp's setup.py asked for numpy<2; vkloss no longer builds through kp's setup.py.)
9. A timestamped Sequence resets its query pool when it begins recording: kp wrote timestamps into queries never
   reset (UNASSIGNED-CoreValidation-DrawState-QueryNotReset), which the validation layer reports.
10. The device is created with shaderInt64 where the physical device supports it: stock kp enables no feature, so a
    shader with 64-bit integers was invalid on any device (VUID-VkShaderModuleCreateInfo-pCode-08740). vkloss's
    wide loads on CPU devices (shaders/include/wide.glsl) move eight floats per access as a u64vec4.
11. `Sequence.is_complete()`: whether the submission in flight has finished, by the fence's status, without
    waiting (vkGetFenceStatus). kp's `is_running()` only says whether `eval_await()` was called since, so a
    deferred host copy could not tell that its values had arrived: a `while not copy.done()` loop never ended.

12. The Python module is vkloss's own: `PYBIND11_MODULE(_kp)`, installed as vkloss._kp (tools/kp_build.py), so a
    stock kp elsewhere in the environment neither breaks vkloss nor is broken by it.
13. fmt is linked header-only (fmt::fmt-header-only): the built module then needs no libfmt at run time, only the
    system's Vulkan loader, and a wheel installs where fmt is not.
14. Algorithms of the same SPIR-V, specialization constants, push-constant size and binding count on one device
    share one VkPipeline (each still has its own descriptor set, bound through its own, identically defined, layouts:
    compatible, so the shared pipeline takes them). kp binds buffers when it makes an Algorithm, so every new set of
    buffers made a new pipeline, and lavapipe compiles each one: 12 ms for vkloss's register-block matmul, paid
    again for each product a model's forward, backward and evaluation bind to other buffers. The pipeline, with the
    layouts it was made with, goes when its last Algorithm does. `kp.shared_pipelines()` counts them.

15. `Manager.algorithm_u32(tensors, spirv, workgroup, spec_consts, push_consts)`, uint32 constants, makes the Algorithm
    with the GIL released, so Python threads make several at once; the Manager's list of the Algorithms it manages
    is then guarded by a mutex. A pipeline is compiled when its Algorithm is made, on the CPU for lavapipe (38 ms for
    vkloss's wide matmul): vkloss compiles a step's new pipelines side by side (vkloss/runtime/algorithms.py).

All but 7, 12, 13, 14 and 15 are candidates for upstream Kompute: bugs or gaps there, not vkloss choices. (Level 6 left
out the edit of kp's setup.py that let kp's own metadata take numpy 2: vkloss no longer builds kp through it.)
"""
from __future__ import annotations

import pathlib
import sys

PATCH_LEVEL = 8

EDITS = {
    "src/Sequence.cpp": [
        # 1: the fence is made once, with the command buffer ...
        ("    this->createCommandPool();\n    this->createCommandBuffer();\n",
         "    this->createCommandPool();\n    this->createCommandBuffer();\n"
         "    this->mFence = this->mDevice->createFence(vk::FenceCreateInfo());\n"),
        # ... reset before a submission instead of created ...
        ("    this->mFence = this->mDevice->createFence(vk::FenceCreateInfo());\n\n    KP_LOG_DEBUG(",
         "    (void)this->mDevice->resetFences(1, &this->mFence);\n\n    KP_LOG_DEBUG("),
        # ... kept after the wait instead of destroyed ...
        ("      this->mDevice->waitForFences(1, &this->mFence, VK_TRUE, waitFor);\n"
         "    this->mDevice->destroy(\n"
         "      this->mFence, (vk::Optional<const vk::AllocationCallbacks>)nullptr);\n",
         "      this->mDevice->waitForFences(1, &this->mFence, VK_TRUE, waitFor);\n"),
        # ... and destroyed with the Sequence.
        ("    if (this->mFreeCommandBuffer) {\n        KP_LOG_INFO(\"Freeing CommandBuffer\");",
         "    if (this->mFence) {\n"
         "        this->mDevice->destroy(\n"
         "          this->mFence, (vk::Optional<const vk::AllocationCallbacks>)nullptr);\n"
         "        this->mFence = nullptr;\n"
         "    }\n\n"
         "    if (this->mFreeCommandBuffer) {\n        KP_LOG_INFO(\"Freeing CommandBuffer\");"),
        # 9
        ("    // latch the first timestamp before any commands are submitted\n"
         "    if (this->timestampQueryPool)\n",
         "    // latch the first timestamp before any commands are submitted\n"
         "    if (this->timestampQueryPool)\n"
         "        this->mCommandBuffer->resetQueryPool(\n"
         "          *this->timestampQueryPool, 0, this->mTimestampCount);\n"
         "    if (this->timestampQueryPool)\n"),
        ("        queryPoolInfo.setQueryCount(totalTimestamps);\n",
         "        queryPoolInfo.setQueryCount(totalTimestamps);\n"
         "        this->mTimestampCount = totalTimestamps;\n"),
        # 2
        ("    vk::CommandPoolCreateInfo commandPoolInfo(vk::CommandPoolCreateFlags(),",
         "    vk::CommandPoolCreateInfo commandPoolInfo(\n"
         "      vk::CommandPoolCreateFlagBits::eResetCommandBuffer,"),
        # 11
        ("bool\nSequence::isRecording() const\n",
         "bool\nSequence::isComplete() const\n"
         "{\n"
         "    return !this->mIsRunning ||\n"
         "           this->mDevice->getFenceStatus(this->mFence) == vk::Result::eSuccess;\n"
         "}\n\n"
         "bool\nSequence::isRecording() const\n"),
    ],
    "src/Algorithm.cpp": [
        # 14: the shared pipelines, by key; heap-held, so never destroyed after a late Algorithm at exit
        ('#include "kompute/Algorithm.hpp"\n\nnamespace kp {\n',
         '#include "kompute/Algorithm.hpp"\n\n#include <map>\n#include <mutex>\n#include <string>\n\n'
         "namespace kp {\n\n"
         "namespace {\n"
         "struct SharedPipeline\n"
         "{\n"
         "    std::shared_ptr<vk::Device> device;\n"
         "    std::string key;\n"
         "    vk::Pipeline pipeline;\n"
         "    vk::PipelineLayout layout; // the layouts it was made with\n"
         "    vk::DescriptorSetLayout setLayout;\n"
         "    ~SharedPipeline();\n"
         "};\n\n"
         "std::mutex& sharedPipelinesLock()\n"
         "{\n"
         "    static std::mutex* lock = new std::mutex();\n"
         "    return *lock;\n"
         "}\n\n"
         "std::map<std::string, std::weak_ptr<SharedPipeline>>& sharedPipelines()\n"
         "{\n"
         "    static auto* pipelines = new std::map<std::string, std::weak_ptr<SharedPipeline>>();\n"
         "    return *pipelines;\n"
         "}\n\n"
         "SharedPipeline::~SharedPipeline()\n"
         "{\n"
         "    {\n"
         "        std::lock_guard<std::mutex> guard(sharedPipelinesLock());\n"
         "        auto found = sharedPipelines().find(this->key);\n"
         "        if (found != sharedPipelines().end() && found->second.expired()) {\n"
         "            sharedPipelines().erase(found);\n"
         "        }\n"
         "    }\n"
         "    this->device->destroy(this->pipeline, (vk::Optional<const vk::AllocationCallbacks>)nullptr);\n"
         "    this->device->destroy(this->layout, (vk::Optional<const vk::AllocationCallbacks>)nullptr);\n"
         "    this->device->destroy(this->setLayout, (vk::Optional<const vk::AllocationCallbacks>)nullptr);\n"
         "}\n"
         "}\n\n"
         "size_t\n"
         "sharedPipelineCount()\n"
         "{\n"
         "    std::lock_guard<std::mutex> guard(sharedPipelinesLock());\n"
         "    return sharedPipelines().size();\n"
         "}\n"),
        # 14: an Algorithm lets go of its share when destroyed
        ("        this->mDescriptorPool = nullptr;\n    }\n}\n",
         "        this->mDescriptorPool = nullptr;\n    }\n\n"
         "    this->mSharedPipeline = nullptr;\n"
         "    this->mPipeline = nullptr;\n"
         "    this->mPipelineLayout = nullptr;\n"
         "    this->mDescriptorSetLayout = nullptr;\n"
         "}\n"),
        # 14: found by key, the pipeline is taken, not made ...
        ("    vk::PipelineCacheCreateInfo pipelineCacheInfo =\n      vk::PipelineCacheCreateInfo();\n"
         "    this->mPipelineCache = std::make_shared<vk::PipelineCache>();\n"
         "    this->mDevice->createPipelineCache(\n      &pipelineCacheInfo, nullptr, this->mPipelineCache.get());\n"
         "    this->mFreePipelineCache = true;\n",
         "    vk::PipelineCacheCreateInfo pipelineCacheInfo =\n      vk::PipelineCacheCreateInfo();\n"
         "    this->mPipelineCache = std::make_shared<vk::PipelineCache>();\n"
         "    this->mDevice->createPipelineCache(\n      &pipelineCacheInfo, nullptr, this->mPipelineCache.get());\n"
         "    this->mFreePipelineCache = true;\n\n"
         "    VkDevice deviceHandle = static_cast<VkDevice>(*this->mDevice);\n"
         "    uint32_t sizes[3] = {\n"
         "        static_cast<uint32_t>(this->mTensors.size()),\n"
         "        this->mPushConstantsDataTypeMemorySize * this->mPushConstantsSize,\n"
         "        this->mSpecializationConstantsDataTypeMemorySize * this->mSpecializationConstantsSize\n"
         "    };\n"
         "    std::string key(reinterpret_cast<const char*>(&deviceHandle), sizeof(deviceHandle));\n"
         "    key.append(reinterpret_cast<const char*>(sizes), sizeof(sizes));\n"
         "    if (sizes[2]) {\n"
         "        key.append(static_cast<const char*>(this->mSpecializationConstantsData), sizes[2]);\n"
         "    }\n"
         "    key.append(reinterpret_cast<const char*>(this->mSpirv.data()),\n"
         "               this->mSpirv.size() * sizeof(uint32_t));\n"
         "    {\n"
         "        std::lock_guard<std::mutex> guard(sharedPipelinesLock());\n"
         "        auto found = sharedPipelines().find(key);\n"
         "        if (found != sharedPipelines().end()) {\n"
         "            std::shared_ptr<SharedPipeline> shared = found->second.lock();\n"
         "            if (shared) {\n"
         "                this->mPipeline = std::make_shared<vk::Pipeline>(shared->pipeline);\n"
         "                this->mFreePipeline = false;\n"
         "                this->mSharedPipeline = shared;\n"
         "                return;\n"
         "            }\n"
         "        }\n"
         "    }\n"),
        # 14: ... else made, and shared with the layouts it was made with
        ("    // TODO: Update to consistent\n",
         "    auto shared = std::make_shared<SharedPipeline>();\n"
         "    shared->device = this->mDevice;\n"
         "    shared->key = key;\n"
         "    shared->pipeline = *this->mPipeline;\n"
         "    shared->layout = *this->mPipelineLayout;\n"
         "    shared->setLayout = *this->mDescriptorSetLayout;\n"
         "    this->mFreePipeline = false;\n"
         "    this->mFreePipelineLayout = false;\n"
         "    this->mFreeDescriptorSetLayout = false;\n"
         "    this->mSharedPipeline = shared;\n"
         "    {\n"
         "        std::lock_guard<std::mutex> guard(sharedPipelinesLock());\n"
         "        sharedPipelines()[key] = shared;\n"
         "    }\n\n"
         "    // TODO: Update to consistent\n"),
    ],
    "src/include/kompute/Algorithm.hpp": [
        # 14
        ("namespace kp {\n\n/**\n    Abstraction for compute shaders",
         "namespace kp {\n\n"
         "/** vkloss patch 14: how many pipelines the live Algorithms share among them. */\n"
         "size_t sharedPipelineCount();\n\n"
         "/**\n    Abstraction for compute shaders"),
        ("    std::shared_ptr<vk::Pipeline> mPipeline;\n    bool mFreePipeline = false;\n",
         "    std::shared_ptr<vk::Pipeline> mPipeline;\n    bool mFreePipeline = false;\n"
         "    std::shared_ptr<void> mSharedPipeline; // vkloss patch 14: held while this Algorithm uses it\n"),
    ],
    "src/include/kompute/Manager.hpp": [
        # 15: the managed list, guarded: Algorithms may be made on several threads at once
        ("#include <set>\n", "#include <mutex>\n#include <set>\n"),
        ("        if (this->mManageResources) {\n            this->mManagedAlgorithms.push_back(algorithm);\n",
         "        if (this->mManageResources) {\n"
         "            std::lock_guard<std::mutex> guard(this->mManagedAlgorithmsLock);\n"
         "            this->mManagedAlgorithms.push_back(algorithm);\n"),
        ("    std::vector<std::weak_ptr<Algorithm>> mManagedAlgorithms;\n",
         "    std::vector<std::weak_ptr<Algorithm>> mManagedAlgorithms;\n"
         "    std::mutex mManagedAlgorithmsLock; // vkloss patch 15\n"),
    ],
    "src/Manager.cpp": [
        # 15
        ("    if (this->mManageResources && this->mManagedAlgorithms.size()) {\n"
         "        KP_LOG_DEBUG(\"Kompute Manager explicitly freeing algorithms\");\n",
         "    std::lock_guard<std::mutex> algorithmsGuard(this->mManagedAlgorithmsLock);\n"
         "    if (this->mManageResources && this->mManagedAlgorithms.size()) {\n"
         "        KP_LOG_DEBUG(\"Kompute Manager explicitly freeing algorithms\");\n"),
        # 10
        ("    vk::DeviceCreateInfo deviceCreateInfo(vk::DeviceCreateFlags(),\n"
         "                                          deviceQueueCreateInfos.size(),\n"
         "                                          deviceQueueCreateInfos.data(),\n"
         "                                          {},\n"
         "                                          {},\n"
         "                                          validExtensions.size(),\n"
         "                                          validExtensions.data());\n",
         "    vk::PhysicalDeviceFeatures enabledFeatures;\n"
         "    enabledFeatures.shaderInt64 = physicalDevice.getFeatures().shaderInt64;\n"
         "    vk::DeviceCreateInfo deviceCreateInfo(vk::DeviceCreateFlags(),\n"
         "                                          deviceQueueCreateInfos.size(),\n"
         "                                          deviceQueueCreateInfos.data(),\n"
         "                                          {},\n"
         "                                          {},\n"
         "                                          validExtensions.size(),\n"
         "                                          validExtensions.data(),\n"
         "                                          &enabledFeatures);\n"),
    ],
    "src/include/kompute/Sequence.hpp": [
        # 9: the pool's size, for the reset
        ("    std::shared_ptr<vk::QueryPool> timestampQueryPool = nullptr;\n",
         "    std::shared_ptr<vk::QueryPool> timestampQueryPool = nullptr;\n"
         "    uint32_t mTimestampCount = 0;\n"),
        # 11
        ("    bool isRunning() const;\n",
         "    bool isRunning() const;\n\n"
         "    /** Whether the submission in flight has finished (its fence is signaled); true when none is. */\n"
         "    bool isComplete() const;\n"),
    ],
    "src/CMakeLists.txt": [
        # 13
        ("    target_link_libraries(kompute PUBLIC Vulkan::Vulkan\n        kp_logger\n        kp_shader\n        fmt::fmt)",
         "    target_link_libraries(kompute PUBLIC Vulkan::Vulkan\n        kp_logger\n        kp_shader\n"
         "        fmt::fmt-header-only)"),
    ],
    "src/logger/CMakeLists.txt": [
        # 13
        ("target_link_libraries(kp_logger PUBLIC fmt::fmt)", "target_link_libraries(kp_logger PUBLIC fmt::fmt-header-only)"),
    ],
    "src/Tensor.cpp": [
        # 5
        ("        case TensorTypes::eStorage:\n            return vk::BufferUsageFlagBits::eStorageBuffer;\n",
         "        case TensorTypes::eStorage:\n            return vk::BufferUsageFlagBits::eStorageBuffer |\n"
         "                   vk::BufferUsageFlagBits::eTransferSrc |\n"
         "                   vk::BufferUsageFlagBits::eTransferDst;\n"),
        # 6
        ("    this->mDevice->allocateMemory(&memoryAllocateInfo, nullptr, memory.get());\n",
         "    vk::Result allocated =\n"
         "      this->mDevice->allocateMemory(&memoryAllocateInfo, nullptr, memory.get());\n"
         "    if (allocated != vk::Result::eSuccess) {\n"
         "        throw std::runtime_error(\"vkAllocateMemory failed: \" +\n"
         "                                 vk::to_string(allocated));\n"
         "    }\n"),
    ],
    "python/src/main.cpp": [
        # 3
        ("        \"eval_async\",\n        [](kp::Sequence& self) { return self.eval(); },",
         "        \"eval_async\",\n        [](kp::Sequence& self) { return self.evalAsync(); },"),
        # 4
        ("    py::class_<kp::OpAlgoDispatch,\n",
         "    py::class_<kp::OpMemoryBarrier,\n"
         "               kp::OpBase,\n"
         "               std::shared_ptr<kp::OpMemoryBarrier>>(m, \"OpMemoryBarrier\")\n"
         "      .def(py::init([](const std::vector<std::shared_ptr<kp::Tensor>>& tensors,\n"
         "                       uint32_t srcAccess, uint32_t dstAccess,\n"
         "                       uint32_t srcStage, uint32_t dstStage) {\n"
         "               return std::make_shared<kp::OpMemoryBarrier>(\n"
         "                 tensors,\n"
         "                 static_cast<vk::AccessFlagBits>(srcAccess),\n"
         "                 static_cast<vk::AccessFlagBits>(dstAccess),\n"
         "                 static_cast<vk::PipelineStageFlagBits>(srcStage),\n"
         "                 static_cast<vk::PipelineStageFlagBits>(dstStage),\n"
         "                 true);\n"
         "           }),\n"
         "           py::arg(\"tensors\"), py::arg(\"src_access\"), py::arg(\"dst_access\"),\n"
         "           py::arg(\"src_stage\"), py::arg(\"dst_stage\"));\n\n"
         "    py::class_<kp::OpAlgoDispatch,\n"),
        # 11
        ("      .def(\"is_running\", &kp::Sequence::isRunning, DOC(kp, Sequence, isRunning))\n",
         "      .def(\"is_running\", &kp::Sequence::isRunning, DOC(kp, Sequence, isRunning))\n"
         "      .def(\"is_complete\", &kp::Sequence::isComplete)\n"),
        # 12
        ("PYBIND11_MODULE(kp, m)", "PYBIND11_MODULE(_kp, m)"),
        # 15
        ("#include <memory>\n", "#include <cstring>\n#include <memory>\n"),
        ("      .def(\n        \"algorithm\",\n        [](kp::Manager& self,\n",
         "      .def(\n"
         "        \"algorithm_u32\",\n"
         "        [](kp::Manager& self,\n"
         "           const std::vector<std::shared_ptr<kp::Tensor>>& tensors,\n"
         "           const py::bytes& spirv,\n"
         "           const kp::Workgroup& workgroup,\n"
         "           const py::array_t<uint32_t, py::array::c_style>& spec_consts,\n"
         "           const py::array_t<uint32_t, py::array::c_style>& push_consts) {\n"
         "            std::string bytes = spirv;\n"
         "            std::vector<uint32_t> spirvVec(bytes.size() / 4);\n"
         "            std::memcpy(spirvVec.data(), bytes.data(), spirvVec.size() * 4);\n"
         "            std::vector<uint32_t> spec(spec_consts.data(), spec_consts.data() + spec_consts.size());\n"
         "            std::vector<uint32_t> push(push_consts.data(), push_consts.data() + push_consts.size());\n"
         "            py::gil_scoped_release released;\n"
         "            return self.algorithm(tensors, spirvVec, workgroup, spec, push);\n"
         "        },\n"
         "        py::arg(\"tensors\"), py::arg(\"spirv\"), py::arg(\"workgroup\"),\n"
         "        py::arg(\"spec_consts\"), py::arg(\"push_consts\"))\n"
         "      .def(\n        \"algorithm\",\n        [](kp::Manager& self,\n"),
        # 7, and 14's count
        ("    py::module_ np = py::module_::import(\"numpy\");\n",
         "    py::module_ np = py::module_::import(\"numpy\");\n"
         f"    m.attr(\"vkloss_patch\") = {PATCH_LEVEL};\n"
         "    m.def(\"shared_pipelines\", &kp::sharedPipelineCount);\n"),
    ],
}


def apply(root: pathlib.Path) -> None:
    for relative, edits in EDITS.items():
        path = root / relative
        text = path.read_text()
        for old, new in edits:
            count = text.count(old)
            if count != 1:
                raise SystemExit(f"kp_patch: {relative}: expected one match, found {count}, of:\n{old}")
            text = text.replace(old, new)
        path.write_text(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    apply(pathlib.Path(sys.argv[1]))
    print(f"kp_patch: applied level {PATCH_LEVEL}")
