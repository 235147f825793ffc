"""kcloud.farm: the farm as one inventory of devices, its capacity, and (elsewhere in this
package) the control plane that places replicas on it."""

from kcloud.farm.capacity import CapacityReport, capacity_report
from kcloud.farm.inventory import FarmFileError, Inventory

__all__ = ["CapacityReport", "FarmFileError", "Inventory", "capacity_report"]
