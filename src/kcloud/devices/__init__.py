"""kcloud.devices: one definition of an accelerator, the sourced chip catalog, the plugins
that discover and meter devices of every vendor, and the inventory: the devices of one farm,
local and emulated (from farm files)."""

from kcloud.devices.catalog import Catalog, UnknownChipError, load_catalog, match_spec
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.inventory import FarmFileError, Inventory
from kcloud.devices.plugin import DevicePlugin, load_plugins
from kcloud.devices.spec import ChipSpec, Figure

__all__ = [
    "Catalog",
    "ChipSpec",
    "Device",
    "DevicePlugin",
    "FarmFileError",
    "Figure",
    "Inventory",
    "Telemetry",
    "UnknownChipError",
    "load_catalog",
    "load_plugins",
    "match_spec",
]
