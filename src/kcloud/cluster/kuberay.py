"""KubeRay manifests for a farm: one `RayCluster` (and a Kustomize base) from farm files.

The same cluster `kcloud cluster start` / `join` build by hand, written down for KubeRay, with the
vendors' device-plugin resource names (docs/kuberay.md is the user's side of this).

Choices, and why:
- **Worker groups.** A farm-file node is a server holding some chips; a KubeRay worker group is a
  set of interchangeable pods. So a group is one chip at one count per pod (`rngd-x4`,
  `atom-ca22-x4`, `h100-sxm-x8`), its replicas the number of farm-file nodes that hold that chip
  in that count, and `minReplicas = maxReplicas = replicas`: the farm is fixed hardware, and
  kcloud's control plane scales model replicas, not nodes. A node with two chip kinds (4 RNGD +
  4 ATOM) becomes two pods, one per kind; Kubernetes schedules each wherever the vendor's device
  plugin advertises its chip, and each joins as its own kcloud node. A pod then holds one
  vendor's devices and needs one vendor's SDK. Nodes with no accelerator (CPU sockets only, or
  no devices) form the group `cpu`.
- **Devices by chip and vendor.** Farm-file devices are emulated on the machine that reads the
  file; a manifest describes the cluster where those chips are real. So each device is taken by
  its chip (catalog row) and vendor, and the vendor's own plugin (the installed `DevicePlugin`
  with that `vendor`) names it: the Kubernetes extended resource the pod requests in `limits`
  (`DevicePlugin.k8s_resource`), and Ray's accelerator resource (`accelerator_resource`:
  `num-gpus` for `GPU`, the `resources` JSON for `RBLN`, `FURIOSA`) declared in `rayStartParams`.
  A vendor with no kcloud plugin (Sapeon, DEEPX, ...), or a chip its plugin's resource does not
  cover, gets no request and a comment that says so: no resource name is invented.
- **kcloud's per-node resources are declared at join time.** `kcloud-node:<name>` and
  `kcloud-device:<uid>` (`resources.node_resources`) name one node and its devices; the pods of a
  group are interchangeable and get their names only when they start, so no manifest can list
  them. Each worker runs `kcloud cluster join <head>:6379 --node <pod name>`, which discovers the
  devices the device plugin mounted into the pod and declares them. The manifest declares only
  what every pod of a group has: the device-plugin request and Ray's accelerator count (what
  KubeRay's autoscaler and the generated `ray start` read).
- **kcloud's commands, not KubeRay's `ray start`.** The RayCluster carries
  `ray.io/overwrite-container-cmd: "true"`: KubeRay then runs the container's command as written
  (`kcloud cluster start` on the head, `kcloud cluster join` on workers, each starting Ray
  itself) and keeps its own generated command in `KUBERAY_GEN_RAY_START_CMD`. Without it, KubeRay
  would run our command first and `ray start --block` after it exits.
- **The head service is KubeRay's.** KubeRay creates `<name>-head-svc` from the head container's
  named ports (kuberay `common/service.go`, `getServicePorts`): the gateway (8000), GCS (6379)
  and dashboard (8265) are listed there, and KubeRay adds metrics (8080).

Names and rules are KubeRay v1.7.0's (`schemas/README.md`); the tests validate the output
against its RayCluster schema.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

import yaml

from kcloud import __version__
from kcloud.cluster.resources import accelerator_resource
from kcloud.devices.device import Device
from kcloud.devices.inventory import FarmFileError, Inventory
from kcloud.devices.plugin import DevicePlugin, plugin_classes

API_VERSION = "ray.io/v1"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
GATEWAY_PORT = 8000
OVERWRITE_CMD = "ray.io/overwrite-container-cmd"
#: Prefix of kcloud's own labels and annotations (a DNS subdomain, as Kubernetes asks).
PREFIX = "kcloud/"
RAYCLUSTER_FILE = "raycluster.yaml"
KUSTOMIZATION_FILE = "kustomization.yaml"
CPU_GROUP = "cpu"
DEFAULT_NAME = "kcloud"

#: KubeRay refuses a RayCluster whose name is not a DNS-1035 label of at most 53 characters
#: (`ValidateRayClusterMetadata`): its pod and service names are built from it.
MAX_CLUSTER_NAME = 53
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: `ray[default]==2.50.1; extra == "cluster"`, as `importlib.metadata.requires` writes it.
_CLUSTER_PIN = re.compile(r"ray(?:\[[^\]]*\])?\s*==\s*([0-9][^,;\s*]*)\s*;.*extra\s*==\s*['\"]cluster['\"]")
_RAY_VERSION = re.compile(r"\d+\.\d+(\.\d+)?([.+-]?[0-9A-Za-z.]+)?")

#: Chips whose vendor plugin's Kubernetes resource names another chip, with why.
_RESOURCE_NAMES_ANOTHER_CHIP = {
    "furiosa-warboy": "it names RNGD cards; Warboy is another chip, and kcloud records no device-plugin "
                      "resource name for Warboy",
}


class ManifestError(ValueError):
    """Input the user can fix (a farm file, a name, a version): the message is one line."""


# ------------------------------------------------------------------ worker groups


@dataclass(frozen=True)
class WorkerGroup:
    """One KubeRay worker group: `per_node` devices of one chip per pod, one pod per farm node.

    `chip` is None for the CPU-only group. `k8s_resource` / `ray_resource` are None where no
    name is known; `note` then says why, for the manifest's comments.
    """

    name: str
    chip: str | None
    vendor: str | None
    per_node: int
    nodes: tuple[str, ...]
    k8s_resource: str | None = None
    ray_resource: str | None = None
    note: str | None = None

    @property
    def replicas(self) -> int:
        return len(self.nodes)


def vendor_plugins() -> dict[str, type[DevicePlugin]]:
    """Installed plugin classes by vendor, without the emulated one (whose vendor is no chip's)."""
    found: dict[str, type[DevicePlugin]] = {}
    for cls in plugin_classes().values():
        if cls.vendor != "emulated":
            found.setdefault(cls.vendor, cls)
    return found


def as_real(device: Device, plugins: dict[str, type[DevicePlugin]]) -> Device | None:
    """The device as its vendor's plugin would discover it on a real node; None without a plugin.

    The emulated plugin records the catalog's vendor and chip (`Device.vendor`, `Device.spec`),
    so only `plugin` and `emulated` change: then `accelerator_resource` answers for the real chip.
    """
    cls = plugins.get(device.vendor)
    if cls is None:
        return None
    return replace(device, plugin=cls.name, emulated=False)


_Names = tuple[str | None, str | None, str | None]


def _names(device: Device, plugins: dict[str, type[DevicePlugin]]) -> _Names:
    """(Kubernetes resource, Ray resource, note) for one chip, or why there are none.

    Ray's count is declared only where the pod gets the devices from a device plugin: a pod
    that requests none has none to count.
    """
    real = as_real(device, plugins)
    chip = device.spec.key
    if real is None:
        return None, None, (
            f"kcloud has no device plugin for vendor {device.vendor!r}, so no Kubernetes or Ray resource "
            f"name is known for {chip}: these pods request no device, and `kcloud cluster join` will find "
            f"none in them; patch in your cluster's resource name and a nodeSelector, or drop the group")
    cls = plugins[device.vendor]
    if cls.k8s_resource is None or chip in _RESOURCE_NAMES_ANOTHER_CHIP:
        why = _RESOURCE_NAMES_ANOTHER_CHIP.get(chip, "the plugin names none")
        named = f" ({cls.k8s_resource})" if cls.k8s_resource else ""
        return None, None, (
            f"the {cls.name} plugin's Kubernetes resource{named} does not cover {chip}: {why}; these pods "
            f"request no device; patch in the name your device plugin advertises")
    return cls.k8s_resource, accelerator_resource(real), None


def short_chip(device: Device) -> str:
    """The chip key without its vendor prefix (`rngd`, `atom-ca22`, `h100-sxm`): group names stay short."""
    key = device.spec.key
    prefix = device.vendor + "-"
    return key[len(prefix):] if key.startswith(prefix) and len(key) > len(prefix) else key


def group_name(stem: str) -> str:
    """A DNS-1123 label of at most 63 characters (KubeRay puts it in the `ray.io/group` label)."""
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-") or "group"
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def worker_groups(inventory: Inventory) -> list[WorkerGroup]:
    """One group per (chip, devices per node) over the farm's nodes, and `cpu` for nodes without
    an accelerator. Ordered by chip key, then count, `cpu` last: the same farm, the same file."""
    if not inventory.nodes:
        raise ManifestError("the farm file(s) declare no nodes: a RayCluster needs at least one worker node")
    plugins = vendor_plugins()
    per_node: dict[str, dict[str, list[Device]]] = defaultdict(lambda: defaultdict(list))
    for device in inventory.devices:
        if device.spec.kind != "cpu":
            per_node[device.node][device.spec.key].append(device)

    members: dict[tuple[str, int], list[str]] = defaultdict(list)
    example: dict[str, Device] = {}
    cpu_only: list[str] = []
    for node in inventory.nodes:
        chips = per_node.get(node.name, {})
        if not chips:
            cpu_only.append(node.name)
        for key, devices in chips.items():
            members[(key, len(devices))].append(node.name)
            example.setdefault(key, devices[0])

    groups: list[WorkerGroup] = []
    for (key, count), nodes in sorted(members.items()):
        device = example[key]
        k8s, ray, note = _names(device, plugins)
        groups.append(WorkerGroup(
            name=group_name(f"{short_chip(device)}-x{count}"), chip=key, vendor=device.vendor,
            per_node=count, nodes=tuple(nodes), k8s_resource=k8s, ray_resource=ray, note=note))
    if cpu_only:
        groups.append(WorkerGroup(name=CPU_GROUP, chip=None, vendor=None, per_node=0, nodes=tuple(cpu_only)))
    return _unique_names(groups)


def _unique_names(groups: list[WorkerGroup]) -> list[WorkerGroup]:
    """Two chips with one short name (different vendors) fall back to their full keys."""
    seen: dict[str, int] = defaultdict(int)
    for group in groups:
        seen[group.name] += 1
    return [
        replace(g, name=group_name(f"{g.chip}-x{g.per_node}")) if seen[g.name] > 1 and g.chip else g
        for g in groups
    ]


# ------------------------------------------------------------------ names and versions


def check_cluster_name(name: str) -> str:
    """KubeRay's rule for a RayCluster's name; `ManifestError` with the rule otherwise."""
    if len(name) > MAX_CLUSTER_NAME or not _DNS1035.fullmatch(name):
        raise ManifestError(
            f"invalid cluster name {name!r}: KubeRay wants a DNS-1035 label of at most {MAX_CLUSTER_NAME} "
            "characters (lowercase letters, digits and '-', starting with a letter, not ending with '-')")
    return name


def check_namespace(namespace: str) -> str:
    """A Kubernetes namespace is a DNS-1123 label of at most 63 characters."""
    if len(namespace) > 63 or not _DNS1123.fullmatch(namespace):
        raise ManifestError(
            f"invalid namespace {namespace!r}: Kubernetes wants a DNS-1123 label of at most 63 characters "
            "(lowercase letters, digits and '-', starting and ending with a letter or digit)")
    return namespace


def check_image(image: str) -> str:
    if not image or any(ch.isspace() for ch in image):
        raise ManifestError(f"invalid image {image!r}: an image reference has no spaces")
    return image


def check_ray_version(ray_version: str) -> str:
    if not _RAY_VERSION.fullmatch(ray_version):
        raise ManifestError(f"invalid Ray version {ray_version!r}: expected e.g. 2.54.0")
    return ray_version


def default_image() -> str:
    """`kcloud:<version>`: an image the user builds (docs/kuberay.md); a tag has no `+`."""
    return f"kcloud:{__version__.replace('+', '-')}"


def default_ray_version() -> str:
    """The Ray the image will carry, as best this machine can tell: the installed Ray, else an
    exact pin in kcloud's `cluster` extra. A lower bound says nothing about the image, so then
    the user must say (`ManifestError`)."""
    try:
        return version("ray")
    except PackageNotFoundError:
        pass
    pin = _cluster_extra_pin()
    if pin is not None:
        return pin
    raise ManifestError(
        "cannot tell which Ray version the image carries: Ray is not installed here and kcloud's "
        "`cluster` extra pins none; pass --ray-version (the Ray in your kcloud image)")


def _cluster_extra_pin() -> str | None:
    """`X` from a `ray==X` requirement of the `cluster` extra, if kcloud's metadata has one."""
    try:
        requirements = requires("kcloud") or []
    except PackageNotFoundError:
        return None
    for line in requirements:
        match = _CLUSTER_PIN.match(line)
        if match:
            return match.group(1)
    return None


# ------------------------------------------------------------------ the RayCluster


def _sh(script: str) -> list[str]:
    """A container command through `sh -c`: raise the open-files limit as KubeRay's own command
    does (it leaves the command alone here), then `exec` so kcloud gets the pod's SIGTERM."""
    return ["sh", "-c", f'ulimit -n "${{RAY_START_ULIMIT_OPEN_FILES:-65536}}"; exec {script}']


def _pod_name_env() -> dict[str, Any]:
    return {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def head_group(image: str) -> dict[str, Any]:
    """The head: Ray head, control plane and gateway (`kcloud cluster start`); its named ports
    become KubeRay's head service."""
    return {
        "serviceType": "ClusterIP",
        "rayStartParams": {"dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": _labels("head")},
            "spec": {
                "containers": [{
                    "name": "ray-head",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    # The Ray head listens on the pod's address (kcloud's default is loopback).
                    "command": _sh(f'kcloud cluster start --host 0.0.0.0 --port {GATEWAY_PORT} '
                                   f'--ray-port {GCS_PORT} --node-ip-address "${{POD_IP}}"'),
                    "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    "ports": [
                        {"name": "gateway", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
                        {"name": "gcs-server", "containerPort": GCS_PORT, "protocol": "TCP"},
                        {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
                    ],
                }],
            },
        },
    }


def ray_start_params(group: WorkerGroup) -> dict[str, str]:
    """What every pod of the group offers Ray, as `ray start` flags (all values are strings in
    the CRD). `resources` is single-quoted JSON, the form KubeRay itself writes into the
    generated `ray start` command and parses back."""
    if group.ray_resource is None or group.per_node == 0:
        return {}
    if group.ray_resource == "GPU":
        return {"num-gpus": str(group.per_node)}
    return {"resources": "'" + json.dumps({group.ray_resource: group.per_node}, sort_keys=True) + "'"}


def worker_group_spec(group: WorkerGroup, image: str) -> dict[str, Any]:
    """One worker group: a fixed number of pods, each requesting its devices and joining."""
    container: dict[str, Any] = {
        "name": "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": _sh(f'kcloud cluster join "${{FQ_RAY_IP}}:{GCS_PORT}" --node "${{POD_NAME}}"'),
        "env": [_pod_name_env()],
    }
    if group.k8s_resource is not None:
        container["resources"] = {"limits": {group.k8s_resource: group.per_node}}
    annotations = {PREFIX + "farm-nodes": ",".join(group.nodes)}
    if group.chip is not None:
        annotations[PREFIX + "chip"] = group.chip
        annotations[PREFIX + "devices-per-pod"] = str(group.per_node)
    return {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.replicas,
        "rayStartParams": ray_start_params(group),
        "template": {
            "metadata": {"labels": _labels("worker"), "annotations": annotations},
            "spec": {"containers": [container]},
        },
    }


def _labels(component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "kcloud"}
    if component is not None:
        labels["app.kubernetes.io/component"] = component
    return labels


def raycluster(
    groups: Sequence[WorkerGroup],
    *,
    name: str = DEFAULT_NAME,
    image: str,
    ray_version: str,
    namespace: str | None = None,
    farm_names: Iterable[str] = (),
) -> dict[str, Any]:
    """The RayCluster resource, as a plain dict (what the YAML says, nothing more)."""
    metadata: dict[str, Any] = {"name": check_cluster_name(name)}
    if namespace is not None:
        metadata["namespace"] = check_namespace(namespace)
    metadata["labels"] = _labels()
    metadata["annotations"] = {OVERWRITE_CMD: "true"}
    farms = ",".join(farm_names)
    if farms:
        metadata["annotations"][PREFIX + "farm"] = farms
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": metadata,
        "spec": {
            "rayVersion": check_ray_version(ray_version),
            "headGroupSpec": head_group(check_image(image)),
            "workerGroupSpecs": [worker_group_spec(g, image) for g in groups],
        },
    }


def kustomization(namespace: str | None = None) -> dict[str, Any]:
    """The Kustomize base beside `raycluster.yaml`: `kubectl apply -k DIR`, and overlays patch it."""
    base: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace is not None:
        base["namespace"] = check_namespace(namespace)
    base["resources"] = [RAYCLUSTER_FILE]
    return base


# ------------------------------------------------------------------ YAML


class _Dumper(yaml.SafeDumper):
    """Block style with list items indented under their key, as kubectl and KubeRay's samples write."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000,
                     allow_unicode=True)


def _group_lines(group: WorkerGroup) -> list[str]:
    """One comment line describing a group (for the header)."""
    nodes = ", ".join(group.nodes)
    if group.chip is None:
        return [f"#   {group.name}: {group.replicas} pod(s), no accelerator; farm nodes: {nodes}"]
    k8s = group.k8s_resource or "no device request"
    ray = f"Ray {group.ray_resource}" if group.ray_resource else "no Ray accelerator resource"
    return [f"#   {group.name}: {group.replicas} pod(s) x {group.per_node} {group.chip} "
            f"({k8s}; {ray}); farm nodes: {nodes}"]


def header(groups: Sequence[WorkerGroup], farm_files: Sequence[str | Path], image: str) -> list[str]:
    """The comment block above the RayCluster: where it came from and what each group is."""
    lines = [
        f"# kcloud RayCluster, written by `kcloud cluster manifests` (kcloud {__version__}) from "
        f"{', '.join(str(p) for p in farm_files)}.",
        "# The farm file's devices are taken as the chips this cluster's servers carry: each worker pod",
        "# requests them from the vendor's device plugin, and `kcloud cluster join` declares them to Ray.",
        "# See docs/kuberay.md.",
        f"# The image ({image}) is one you build: kcloud[cluster] plus the vendors' SDKs.",
        "# Worker groups (one per chip and devices per pod; replicas = farm-file nodes with that many):",
    ]
    for group in groups:
        lines.extend(_group_lines(group))
    return lines


def render(manifest: dict[str, Any], groups: Sequence[WorkerGroup], header_lines: Sequence[str]) -> str:
    """The RayCluster as YAML: the header, and each group's note above its `groupName`."""
    notes = {g.name: g.note for g in groups if g.note}
    out = list(header_lines)
    for line in to_yaml(manifest).splitlines():
        match = re.fullmatch(r"(\s*)- groupName: (\S+)", line)
        if match and match.group(2) in notes:
            out.extend(f"{match.group(1)}# {part}" for part in _wrap(f"NOTE: {notes[match.group(2)]}"))
        out.append(line)
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int = 100) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


# ------------------------------------------------------------------ the whole job


@dataclass(frozen=True)
class Manifests:
    """What `kcloud cluster manifests` writes: the RayCluster (as data and as YAML) and its base."""

    raycluster: dict[str, Any]
    kustomization: dict[str, Any]
    groups: tuple[WorkerGroup, ...]
    raycluster_yaml: str

    @property
    def kustomization_yaml(self) -> str:
        return to_yaml(self.kustomization)


def build_manifests(
    farm_files: Sequence[str | Path],
    *,
    name: str = DEFAULT_NAME,
    image: str | None = None,
    ray_version: str | None = None,
    namespace: str | None = None,
) -> Manifests:
    """Read the farm files and build everything; `ManifestError` (one line) on any bad input,
    before anything is written."""
    check_cluster_name(name)
    if namespace is not None:
        check_namespace(namespace)
    image = check_image(image if image is not None else default_image())
    ray_version = check_ray_version(ray_version if ray_version is not None else default_ray_version())
    if not farm_files:
        raise ManifestError("no farm file: pass --farm FILE")
    try:
        inventory = Inventory.build(farm_files, include_local=False)
    except FarmFileError as exc:
        raise ManifestError(str(exc)) from None
    with inventory:
        groups = tuple(worker_groups(inventory))
        farm_names = inventory.farm_names
    cluster = raycluster(groups, name=name, image=image, ray_version=ray_version, namespace=namespace,
                         farm_names=farm_names)
    text = render(cluster, groups, header(groups, farm_files, image))
    return Manifests(cluster, kustomization(namespace), groups, text)


def write_manifests(manifests: Manifests, out_dir: str | Path) -> list[Path]:
    """Write `raycluster.yaml` and `kustomization.yaml` into `out_dir` (created if missing)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for file_name, text in ((RAYCLUSTER_FILE, manifests.raycluster_yaml),
                                (KUSTOMIZATION_FILE, manifests.kustomization_yaml)):
            path = out / file_name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise ManifestError(f"{out}: cannot write the manifests: {exc.strerror or exc}") from None
    return written
