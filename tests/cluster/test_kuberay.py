"""`kcloud cluster manifests`: the RayCluster for a farm, checked against KubeRay's own schema.

The schema is KubeRay v1.7.0's RayCluster CRD (`src/kcloud/cluster/schemas/`, provenance in its
README). A CRD schema is OpenAPI with Kubernetes extensions, which a JSON Schema validator does
not know; `crd_validator` translates each one explicitly, and the negative tests below show the
translated schema does refuse what the API server would.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from typer.testing import CliRunner

import kcloud.cluster
from kcloud.cluster import kuberay
from kcloud.cluster.kuberay import ManifestError, build_manifests, group_name
from kcloud.cluster.kuberay_commands import register
from kcloud.devices.plugins.furiosa import FuriosaPlugin
from kcloud.devices.plugins.nvidia import NvidiaPlugin
from kcloud.devices.plugins.rebellions import RebellionsPlugin

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "k-cloud-phase1.toml"
SCHEMA = Path(kcloud.cluster.__file__).parent / "schemas" / "ray.io_rayclusters.v1.json"
RAY = "2.54.0"

# ------------------------------------------------------------------ KubeRay's schema, translated


def _strict(node: Any) -> Any:
    """The CRD schema as the API server applies it, in JSON Schema terms (schemas/README.md)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    # Unknown fields are pruned by the API server and refused by kubectl's strict validation.
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    # int-or-string: the CRD spells it as anyOf already; say it where it does not.
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    # A list of type set has no duplicates.
    if out.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    return out


def _list_map_keys(validator: Any, keys: list[str], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """`x-kubernetes-list-type: map`: no two items may share the values of the map keys."""
    if not isinstance(instance, list):
        return
    seen: set[tuple[Any, ...]] = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate item for list-map keys {keys}: {item}")
        seen.add(key)


def _cel(validator: Any, rules: list[dict[str, str]], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """CEL rules are not evaluated here: a manifest that sets such a field must be checked by hand."""
    yield jsonschema.ValidationError(
        f"field has CEL rules this test does not evaluate: {[r.get('rule') for r in rules]}")


def _int_format(bits: int) -> Any:
    def check(value: object) -> bool:
        return not isinstance(value, int) or -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
    return check


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.protocols.Validator:
    schema = _strict(json.loads(SCHEMA.read_text(encoding="utf-8")))
    cls = jsonschema.validators.extend(
        jsonschema.Draft7Validator,
        {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-validations": _cel},
    )
    formats = jsonschema.FormatChecker()
    formats.checks("int32")(_int_format(32))
    formats.checks("int64")(_int_format(64))
    cls.check_schema(schema)
    return cls(schema, format_checker=formats)


def crd_errors(validator: jsonschema.protocols.Validator, manifest: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def kuberay_rule_errors(manifest: dict[str, Any]) -> list[str]:
    """The rules KubeRay's operator checks beyond the schema (v1.7.0, `utils/validation.go`), and
    how it and Ray's autoscaler read `rayStartParams["resources"]`."""
    problems = []
    name = manifest["metadata"]["name"]
    if len(name) > 53 or not _DNS1035.fullmatch(name):
        problems.append(f"cluster name {name!r}")
    spec = manifest["spec"]
    groups = spec.get("workerGroupSpecs", [])
    names = [g["groupName"] for g in groups]
    if len(names) != len(set(names)):
        problems.append(f"duplicate group names {names}")
    for group in [spec["headGroupSpec"], *groups]:
        label = group.get("groupName", "head")
        if "groupName" in group and (len(label) > 63 or not _DNS1123.fullmatch(label)):
            problems.append(f"group name {label!r}")
        if not group["template"]["spec"]["containers"]:
            problems.append(f"{label}: no container")
        params = group.get("rayStartParams", {})
        if "labels" in params:
            problems.append(f"{label}: rayStartParams labels")
        if "resources" in params:
            raw = params["resources"]
            kuberay_view = json.loads(raw.strip("'\"` "))  # pod.go getResourcesMap
            ray_view = json.loads(raw[1:-1].replace("\\", ""))  # Ray's kuberay autoscaling_config
            if kuberay_view != ray_view:
                problems.append(f"{label}: resources read differently: {raw}")
        if "groupName" in group and not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            problems.append(f"{label}: replicas outside [min, max]")
    return problems


# ------------------------------------------------------------------ helpers


def write_farm(tmp_path: Path, text: str, name: str = "farm.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GPU_FARM = """
[farm]
name = "gpu-lab"

[[nodes]]
name = "dgx-1"
devices = [{ chip = "nvidia-h100-sxm", count = 8 }, { chip = "cpu-generic", count = 2 }]

[[nodes]]
name = "dgx-2"
devices = [{ chip = "nvidia-h100-sxm", count = 8 }]

[[nodes]]
name = "cpu-1"
devices = [{ chip = "cpu-generic", count = 2 }]

[[nodes]]
name = "cpu-2"
"""


def groups_by_name(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in manifest["spec"]["workerGroupSpecs"]}


def container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _group() -> None:  # a group, as `kcloud cluster` is
        pass

    return app


def run(*args: str) -> Any:
    return CliRunner().invoke(cli(), ["manifests", *args])


# ------------------------------------------------------------------ the example farm


@pytest.fixture(scope="module")
def example() -> kuberay.Manifests:
    return build_manifests([EXAMPLE], ray_version=RAY, namespace="kcloud")


def test_example_is_a_valid_raycluster(example: kuberay.Manifests, crd_validator: Any) -> None:
    assert crd_errors(crd_validator, example.raycluster) == []
    assert kuberay_rule_errors(example.raycluster) == []
    # the YAML says exactly what the dict says (comments aside)
    assert yaml.safe_load(example.raycluster_yaml) == example.raycluster


def test_example_groups_one_per_chip_and_count(example: kuberay.Manifests) -> None:
    groups = groups_by_name(example.raycluster)
    assert {name: g["replicas"] for name, g in groups.items()} == {
        "atom-ca22-x4": 5, "rngd-x4": 1, "rngd-x8": 1, "warboy-x4": 1, "dx-m1-x2": 1,
        "x220-enterprise-x8": 2, "x330-x2": 1,
    }
    # a node with two chip kinds is two pods, one per kind
    nodes = {name: g["template"]["metadata"]["annotations"]["kcloud/farm-nodes"].split(",")
             for name, g in groups.items()}
    assert "naver-private-1" in nodes["rngd-x4"] and "naver-private-1" in nodes["atom-ca22-x4"]
    assert nodes["rngd-x8"] == ["gwangju-1"]
    for g in groups.values():  # the farm is fixed hardware
        assert g["minReplicas"] == g["replicas"] == g["maxReplicas"]


def test_example_requests_the_vendor_device_plugin_resources(example: kuberay.Manifests) -> None:
    groups = groups_by_name(example.raycluster)
    assert container(groups["rngd-x4"])["resources"]["limits"] == {"furiosa.ai/rngd": 4}
    assert container(groups["rngd-x8"])["resources"]["limits"] == {"furiosa.ai/rngd": 8}
    assert container(groups["atom-ca22-x4"])["resources"]["limits"] == {"rebellions.ai/npu": 4}
    # the names are the plugins' own, not copies
    assert FuriosaPlugin.k8s_resource == "furiosa.ai/rngd"
    assert RebellionsPlugin.k8s_resource == "rebellions.ai/npu"
    # Ray's own accelerator resources, as single-quoted JSON (how KubeRay writes it)
    assert groups["rngd-x4"]["rayStartParams"] == {"resources": '\'{"FURIOSA": 4}\''}
    assert groups["atom-ca22-x4"]["rayStartParams"] == {"resources": '\'{"RBLN": 4}\''}


def test_chips_without_a_known_resource_request_nothing_and_say_why(example: kuberay.Manifests) -> None:
    groups = groups_by_name(example.raycluster)
    for name in ("x220-enterprise-x8", "x330-x2", "dx-m1-x2", "warboy-x4"):
        assert "resources" not in container(groups[name])
        assert groups[name]["rayStartParams"] == {}
    text = example.raycluster_yaml
    assert re.search(r"# NOTE: kcloud has no device plugin for vendor 'sapeon'.*\n(.*\n)*?\s+- groupName: "
                     r"x220-enterprise-x8", text)
    assert re.search(r"# NOTE: the furiosa plugin's Kubernetes resource \(furiosa.ai/rngd\) does not cover "
                     r"furiosa-warboy", text)
    notes = {g.name: g.note for g in example.groups}
    assert notes["rngd-x4"] is None and "deepx" in (notes["dx-m1-x2"] or "")


def test_head_runs_kcloud_and_exposes_gateway_gcs_and_dashboard(example: kuberay.Manifests) -> None:
    cluster = example.raycluster
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert cluster["metadata"]["namespace"] == "kcloud"
    assert cluster["spec"]["rayVersion"] == RAY
    head = container(cluster["spec"]["headGroupSpec"])
    assert "exec kcloud cluster start --host 0.0.0.0 --port 8000" in head["command"][-1]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == {
        "gateway": 8000, "gcs-server": 6379, "dashboard": 8265}
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_workers_join_under_their_pod_name(example: kuberay.Manifests) -> None:
    for group in example.raycluster["spec"]["workerGroupSpecs"]:
        worker = container(group)
        assert worker["command"][:2] == ["sh", "-c"]
        assert worker["command"][2].endswith(
            'exec kcloud cluster join "${FQ_RAY_IP}:6379" --node "${POD_NAME}"')
        pod_name = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        assert pod_name in worker["env"]


def test_same_farm_same_bytes() -> None:
    first = build_manifests([EXAMPLE], ray_version=RAY).raycluster_yaml
    assert build_manifests([EXAMPLE], ray_version=RAY).raycluster_yaml == first


# ------------------------------------------------------------------ GPUs and CPU-only nodes


def test_gpu_nodes_declare_num_gpus_and_cpu_nodes_share_a_group(tmp_path: Path, crd_validator: Any) -> None:
    built = build_manifests([write_farm(tmp_path, GPU_FARM)], ray_version=RAY, name="lab")
    assert crd_errors(crd_validator, built.raycluster) == []
    assert kuberay_rule_errors(built.raycluster) == []
    groups = groups_by_name(built.raycluster)
    assert list(groups) == ["h100-sxm-x8", "cpu"]
    gpu = groups["h100-sxm-x8"]
    assert gpu["replicas"] == 2
    assert container(gpu)["resources"]["limits"] == {NvidiaPlugin.k8s_resource: 8} == {"nvidia.com/gpu": 8}
    assert gpu["rayStartParams"] == {"num-gpus": "8"}
    cpu = groups["cpu"]
    assert cpu["replicas"] == 2  # cpu-1 (sockets only) and cpu-2 (no devices)
    assert "resources" not in container(cpu) and cpu["rayStartParams"] == {}
    assert built.raycluster["metadata"]["annotations"]["kcloud/farm"] == "gpu-lab"
    assert "namespace" not in built.raycluster["metadata"] and "namespace" not in built.kustomization


def test_farm_files_combine(tmp_path: Path) -> None:
    dgx3 = '[[nodes]]\nname = "dgx-3"\ndevices = [{ chip = "nvidia-h100-sxm", count = 8 }]\n'
    more = write_farm(tmp_path, dgx3, "more.toml")
    built = build_manifests([write_farm(tmp_path, GPU_FARM), more], ray_version=RAY)
    assert groups_by_name(built.raycluster)["h100-sxm-x8"]["replicas"] == 3


def test_long_group_names_are_shortened_uniquely() -> None:
    long = "x" * 80
    name = group_name(long)
    assert len(name) <= 63 and _DNS1123.fullmatch(name)
    assert name != group_name("x" * 81)
    assert group_name("Atom_CA22 x4") == "atom-ca22-x4"


# ------------------------------------------------------------------ the schema refuses mistakes


@pytest.mark.parametrize("mistake", [
    "unknown-field", "start-param-not-a-string", "duplicate-container", "bad-quantity", "cel-field",
    "int32-overflow",
])
def test_translated_schema_refuses_what_the_api_server_would(
        mistake: str, example: kuberay.Manifests, crd_validator: Any) -> None:
    bad = copy.deepcopy(example.raycluster)
    group = bad["spec"]["workerGroupSpecs"][0]
    if mistake == "unknown-field":
        group["replica"] = 3
    elif mistake == "start-param-not-a-string":
        group["rayStartParams"]["num-gpus"] = 8
    elif mistake == "duplicate-container":
        group["template"]["spec"]["containers"].append(copy.deepcopy(container(group)))
    elif mistake == "bad-quantity":
        container(group)["resources"] = {"limits": {"nvidia.com/gpu": "eight"}}
    elif mistake == "cel-field":
        bad["spec"]["managedBy"] = "ray.io/kuberay-operator"
    elif mistake == "int32-overflow":
        group["maxReplicas"] = 2**31
    assert crd_errors(crd_validator, bad), mistake


def test_schema_records_its_source() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert "ray-project/kuberay" in schema["$comment"]
    assert "v1.7.0" in schema["$comment"] and "59d663aeec13760646da3db9c1cf8cfe883e30b7" in schema["$comment"]
    readme = (SCHEMA.parent / "README.md").read_text(encoding="utf-8")
    assert "ray-operator/config/crd/bases/ray.io_rayclusters.yaml" in readme
    assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec"}


# ------------------------------------------------------------------ Ray version


def test_ray_version_installed_then_pinned_then_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kuberay, "version", lambda name: "2.61.1")
    assert kuberay.default_ray_version() == "2.61.1"

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(kuberay, "version", missing)
    monkeypatch.setattr(kuberay, "requires", lambda name: ['ray[default]==2.50.1; extra == "cluster"'])
    assert kuberay.default_ray_version() == "2.50.1"
    monkeypatch.setattr(kuberay, "requires", lambda name: ['ray[default]>=2.9; extra == "cluster"'])
    with pytest.raises(ManifestError, match="--ray-version"):
        kuberay.default_ray_version()


# ------------------------------------------------------------------ the command


def test_command_prints_the_raycluster(tmp_path: Path) -> None:
    result = run("--farm", str(EXAMPLE), "--ray-version", RAY, "--name", "farm")
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.stdout)
    assert manifest["kind"] == "RayCluster" and manifest["metadata"]["name"] == "farm"
    assert "warning: group x220-enterprise-x8" in result.stderr  # notes also reach the terminal
    assert result.stdout.startswith("# kcloud RayCluster")


def test_command_writes_a_kustomize_base(tmp_path: Path, crd_validator: Any) -> None:
    out = tmp_path / "deploy" / "kcloud"
    result = run("-f", str(EXAMPLE), "--ray-version", RAY, "--namespace", "ai",
                 "--image", "reg.example/kcloud:1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"kubectl apply -k {out}" in result.stdout
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization == {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                             "namespace": "ai", "resources": ["raycluster.yaml"]}
    manifest = yaml.safe_load((out / "raycluster.yaml").read_text())
    assert crd_errors(crd_validator, manifest) == []
    assert {container(g)["image"] for g in manifest["spec"]["workerGroupSpecs"]} == {"reg.example/kcloud:1"}
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # kustomize (inside kubectl) builds the base without a cluster
        built = subprocess.run([kubectl, "kustomize", str(out)], capture_output=True, text=True, timeout=60)
        assert built.returncode == 0, built.stderr
        assert yaml.safe_load(built.stdout)["metadata"]["namespace"] == "ai"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (its built-in kustomize)")
def test_docs_overlay_builds_on_the_base(tmp_path: Path, crd_validator: Any) -> None:
    """docs/kuberay.md's overlay example applies to the generated base, and stays a valid RayCluster."""
    docs = (REPO / "docs" / "kuberay.md").read_text(encoding="utf-8")
    overlay = re.search(r"```yaml\n(# deploy/prod/kustomization.yaml\n.*?)```", docs, re.S)
    assert overlay is not None
    assert run("-f", str(EXAMPLE), "--ray-version", RAY, "--out", str(tmp_path / "kcloud")).exit_code == 0
    (tmp_path / "prod").mkdir()
    (tmp_path / "prod" / "kustomization.yaml").write_text(overlay.group(1), encoding="utf-8")
    built = subprocess.run([str(shutil.which("kubectl")), "kustomize", str(tmp_path / "prod")],
                           capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    manifest = yaml.safe_load(built.stdout)
    assert crd_errors(crd_validator, manifest) == []
    head = manifest["spec"]["headGroupSpec"]
    assert head["serviceType"] == "LoadBalancer"
    assert container(head)["image"] == "registry.example.com/kcloud:0.1.0"


def test_default_image_is_kcloud_at_its_version() -> None:
    assert re.fullmatch(r"kcloud:[\w][\w.-]*", kuberay.default_image())


def _one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def test_missing_farm_file(tmp_path: Path) -> None:
    line = _one_error_line(run("--farm", str(tmp_path / "absent.toml"), "--ray-version", RAY))
    assert "absent.toml: file not found" in line


def test_malformed_farm_file(tmp_path: Path) -> None:
    path = write_farm(tmp_path, "[[nodes]]\nname = \n")
    assert "TOML syntax error" in _one_error_line(run("--farm", str(path), "--ray-version", RAY))


def test_farm_without_nodes(tmp_path: Path) -> None:
    path = write_farm(tmp_path, '[farm]\nname = "empty"\n')
    assert "declare no nodes" in _one_error_line(run("--farm", str(path), "--ray-version", RAY))


def test_unknown_chip(tmp_path: Path) -> None:
    path = write_farm(tmp_path, '[[nodes]]\nname = "n1"\ndevices = [{ chip = "furiosa-rngdx", count = 1 }]\n')
    line = _one_error_line(run("--farm", str(path), "--ray-version", RAY))
    assert "unknown chip 'furiosa-rngdx'" in line and "furiosa-rngd" in line


@pytest.mark.parametrize("name", ["Kcloud", "1kcloud", "k_cloud", "kcloud-", "k" * 54])
def test_invalid_cluster_name(name: str) -> None:
    line = _one_error_line(run("--farm", str(EXAMPLE), "--ray-version", RAY, "--name", name))
    assert "invalid cluster name" in line and "DNS-1035" in line


def test_invalid_namespace() -> None:
    line = _one_error_line(run("--farm", str(EXAMPLE), "--ray-version", RAY, "--namespace", "AI_team"))
    assert "invalid namespace 'AI_team'" in line


def test_invalid_ray_version() -> None:
    assert "invalid Ray version" in _one_error_line(run("--farm", str(EXAMPLE), "--ray-version", "latest"))


def test_out_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("")
    line = _one_error_line(run("--farm", str(EXAMPLE), "--ray-version", RAY, "--out", str(blocker / "sub")))
    assert "cannot write the manifests" in line
