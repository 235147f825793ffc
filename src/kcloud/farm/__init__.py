"""kcloud.farm: the control plane: the farm's capacity, deployments and the placement of their
replicas on the devices of the inventory (`kcloud.devices.inventory`)."""

from kcloud.farm.capacity import CapacityReport, capacity_report

__all__ = ["CapacityReport", "capacity_report"]
