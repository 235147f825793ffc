"""The installed plugins are found through the `kcloud.devices` entry points, with their names."""

from __future__ import annotations

from kcloud.devices.plugin import ENTRY_POINT_GROUP, DevicePlugin, load_plugins


def test_entry_points_load_every_vendor() -> None:
    plugins = {plugin.name: plugin for plugin in load_plugins()}
    assert {"cpu", "nvidia", "rebellions", "furiosa"} <= set(plugins)
    assert all(isinstance(p, DevicePlugin) for p in plugins.values())
    assert ENTRY_POINT_GROUP == "kcloud.devices"


def test_resource_names_are_the_vendors_own() -> None:
    plugins = {plugin.name: plugin for plugin in load_plugins()}
    def names(plugin: str) -> tuple:
        p = plugins[plugin]
        return p.ray_resource, p.k8s_resource, p.visible_devices_env

    assert names("nvidia") == ("GPU", "nvidia.com/gpu", "CUDA_VISIBLE_DEVICES")
    assert names("rebellions") == ("RBLN", "rebellions.ai/npu", "RBLN_DEVICES")
    assert names("furiosa") == ("FURIOSA", "furiosa.ai/rngd", "FURIOSA_DEVICES")
    assert plugins["cpu"].runtimes == ("onnxruntime-cpu",)
    assert plugins["nvidia"].runtimes == ("onnxruntime-cuda",)


def test_discovery_never_raises_here() -> None:
    for plugin in load_plugins():
        devices = plugin.discover("n")
        assert isinstance(devices, list)
        plugin.close()
