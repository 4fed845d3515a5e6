"""Device listing and selection."""
import pytest

import vkloss
from vkloss import device as device_module
from vkloss.device import DeviceInfo, choose_device


def fake(index, type_):
    return DeviceInfo(index=index, name=f"dev{index}", type=type_, driver="fake", api_version="1.3.0",
                      max_storage_buffer_range=1 << 27, max_workgroup_count=(65535, 65535, 65535),
                      max_workgroup_invocations=1024, max_workgroup_size=1024, max_shared_memory=32768, max_push_constants_size=128)


def test_devices_lists_this_machines_devices():
    found = vkloss.devices()
    assert found and [d.index for d in found] == list(range(len(found)))
    for d in found:
        assert d.name and d.type in {"discrete", "integrated", "virtual", "cpu", "other"} and d.driver
        assert d.max_storage_buffer_range >= 1 << 20 and min(d.max_workgroup_count) >= 65535


def test_graph_reports_its_device(g):
    assert g.device in vkloss.devices()


@pytest.mark.parametrize("types, expected", [
    (["cpu", "integrated", "discrete"], 2),
    (["cpu", "integrated"], 1),
    (["cpu", "virtual"], 1),
    (["cpu"], 0),
])
def test_preference_discrete_then_integrated_then_cpu(monkeypatch, types, expected):
    monkeypatch.setattr(device_module, "devices", lambda: [fake(i, t) for i, t in enumerate(types)])
    monkeypatch.delenv("VKLOSS_DEVICE", raising=False)
    assert choose_device(None).index == expected


def test_index_and_environment_variable_choose(monkeypatch):
    monkeypatch.setattr(device_module, "devices", lambda: [fake(0, "discrete"), fake(1, "cpu")])
    monkeypatch.setenv("VKLOSS_DEVICE", "1")
    assert choose_device(None).index == 1
    assert choose_device(0).index == 0  # an explicit index wins over the variable


@pytest.mark.parametrize("value", ["garbage", "7", "-1"])
def test_bad_device_names_the_devices_there_are(monkeypatch, value):
    monkeypatch.setattr(device_module, "devices", lambda: [fake(0, "cpu")])
    monkeypatch.setenv("VKLOSS_DEVICE", value)
    with pytest.raises(ValueError, match=r"VKLOSS_DEVICE.*\[0\] dev0"):
        choose_device(None)
    with pytest.raises(ValueError, match="no such device"):
        choose_device(3)


def test_no_device_names_the_packages_that_provide_one(monkeypatch):
    monkeypatch.setattr(device_module, "devices", lambda: [])
    with pytest.raises(vkloss.NoVulkanDeviceError, match="mesa-vulkan-drivers"):
        choose_device(None)


def test_no_vulkan_loader_is_a_clear_error(monkeypatch):
    def missing(name, *a, **k):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(device_module.ctypes, "CDLL", missing)
    monkeypatch.setattr(device_module.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(vkloss.NoVulkanDeviceError, match="libvulkan.*mesa-vulkan-drivers"):
        device_module._enumerate()
