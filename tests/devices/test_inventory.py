"""Farm files and the Inventory: good files build, every kind of bad input is refused before
anything starts, with the file, the key path (or line) and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcloud.devices.inventory import FarmFileError, Inventory, load_farm
from kcloud.devices.plugins.cpu import CpuPlugin

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"

GOOD = """
[farm]
name = "test-farm"

[[nodes]]
name = "gwangju-1"
site = "Gwangju AI cluster"
sector = "public"
cloud = "KT Cloud"
devices = [
  { chip = "furiosa-rngd", count = 8 },
  { chip = "rebellions-atom-ca22", count = 4 },
]

[[nodes]]
name = "nhn-1"
cloud = "NHN Cloud"
devices = [ { chip = "sapeon-x220-enterprise", ids = ["x0", "x1"] }, { chip = "deepx-dx-m1", id = "edge" } ]
"""


def _write(tmp_path: Path, text: str, name: str = "farm.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused(tmp_path: Path, text: str) -> FarmFileError:
    path = _write(tmp_path, text)
    with pytest.raises(FarmFileError) as info:
        Inventory.build([path], include_local=False)
    assert str(path) in str(info.value)
    return info.value


def _node(devices: str, extra: str = "") -> str:
    return f'[[nodes]]\nname = "gwangju-1"\n{extra}devices = [ {devices} ]\n'


# ---------------------------------------------------------------- good files


def test_good_farm_builds_emulated_devices(tmp_path: Path) -> None:
    inventory = Inventory.build([_write(tmp_path, GOOD)], include_local=False)
    uids = [d.uid for d in inventory.devices]
    assert uids[:3] == ["gwangju-1/rngd0", "gwangju-1/rngd1", "gwangju-1/rngd2"]
    assert "gwangju-1/atom-ca22-3" in uids and "nhn-1/x1" in uids and "nhn-1/edge" in uids
    assert len(inventory) == 8 + 4 + 2 + 1
    assert all(d.emulated for d in inventory.devices)
    rngd = inventory.get("gwangju-1/rngd0")
    assert rngd.attributes["sector"] == "public" and rngd.attributes["cloud"] == "KT Cloud"
    assert inventory.plugin_for(rngd) is inventory.emulated
    assert [n.name for n in inventory.nodes] == ["gwangju-1", "nhn-1"]
    assert inventory.farm_names == ("test-farm",)
    assert inventory.sample(rngd).modelled


def test_local_devices_join_under_the_given_node_name(tmp_path: Path) -> None:
    inventory = Inventory.build([_write(tmp_path, GOOD)], node="edge-host", plugins=[CpuPlugin()])
    assert inventory.devices[0].uid == "edge-host/cpu0" and not inventory.devices[0].emulated
    assert inventory.nodes[0].name == "edge-host" and inventory.nodes[0].local
    assert len(inventory.sample_all()) == len(inventory)


def test_example_farm_has_four_vendors_two_sectors_three_clouds() -> None:
    farm = load_farm([EXAMPLE])
    vendors = {d.chip.split("-")[0] for d in farm.devices}
    assert {"sapeon", "rebellions", "furiosa", "deepx"} <= vendors
    assert {n.sector for n in farm.nodes} == {"private", "public"}
    assert {n.cloud for n in farm.nodes} == {"NHN Cloud", "Naver Cloud", "KT Cloud"}
    assert any(n.site == "Gwangju AI cluster" for n in farm.nodes)


def test_unknown_device_uid_is_a_keyerror(tmp_path: Path) -> None:
    inventory = Inventory.build([_write(tmp_path, GOOD)], include_local=False)
    with pytest.raises(KeyError):
        inventory.get("gwangju-1/rngd99")


# ---------------------------------------------------------------- bad input: one test per case


def test_unknown_chip_names_key_and_suggests(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngdd", count = 8 }'))
    assert "nodes[0] (gwangju-1).devices[0].chip" in str(err)
    assert "unknown chip 'furiosa-rngdd'" in str(err) and "furiosa-rngd" in str(err)


def test_zero_count(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd", count = 0 }'))
    assert "devices[0].count" in str(err) and "at least 1, got 0" in str(err)


def test_negative_count(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd", count = -2 }'))
    assert "devices[0].count" in str(err) and "got -2" in str(err)


def test_count_not_a_number(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd", count = "eight" }'))
    assert "devices[0].count" in str(err) and "whole number" in str(err) and "'eight'" in str(err)


def test_count_not_whole(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd", count = 2.5 }'))
    assert "whole number" in str(err) and "2.5" in str(err)


def test_count_boolean(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd", count = true }'))
    assert "whole number" in str(err)


def test_duplicate_node_name(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd" }') + _node('{ chip = "furiosa-rngd" }'))
    assert "nodes[1] (gwangju-1).name" in str(err) and "duplicate node name 'gwangju-1'" in str(err)


def test_duplicate_node_name_across_files(tmp_path: Path) -> None:
    first = _write(tmp_path, _node('{ chip = "furiosa-rngd" }'), "a.toml")
    second = _write(tmp_path, _node('{ chip = "furiosa-rngd" }'), "b.toml")
    with pytest.raises(FarmFileError) as info:
        Inventory.build([first, second], include_local=False)
    assert str(info.value).startswith(str(second)) and str(first) in str(info.value)


def test_duplicate_device_id(tmp_path: Path) -> None:
    devices = '{ chip = "furiosa-rngd", id = "npu0" }, { chip = "rebellions-atom-ca22", ids = ["a", "npu0"] }'
    err = _refused(tmp_path, _node(devices))
    assert "devices[1]" in str(err) and "duplicate device id 'npu0'" in str(err)


def test_generated_id_colliding_with_explicit_id(tmp_path: Path) -> None:
    devices = '{ chip = "furiosa-rngd", count = 2 }, { chip = "furiosa-rngd", id = "rngd1" }'
    err = _refused(tmp_path, _node(devices))
    assert "'rngd1'" in str(err)


def test_count_disagreeing_with_ids(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd", count = 3, ids = ["a", "b"] }'))
    assert "count = 3 but 2 id(s)" in str(err)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    err = _refused(tmp_path, '[farm]\nname = "x"\n\n[[nodes]\nname = "gwangju-1"\n')
    assert "line 4, column" in str(err) and "TOML syntax error" in str(err)


def test_unknown_node_key(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd" }', extra='colour = "blue"\n'))
    assert "nodes[0] (gwangju-1).colour" in str(err) and "unknown key" in str(err) and "sector" in str(err)


def test_unknown_device_key(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node('{ chip = "furiosa-rngd", cout = 8 }'))
    assert "devices[0].cout" in str(err) and "unknown key (allowed: chip, count" in str(err)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = _refused(tmp_path, '[farms]\nname = "x"\n')
    assert "farms: unknown key (allowed: farm, nodes)" in str(err)


def test_missing_chip(tmp_path: Path) -> None:
    err = _refused(tmp_path, _node("{ count = 2 }"))
    assert "devices[0].chip" in str(err) and "required key is missing" in str(err)


def test_bad_node_name(tmp_path: Path) -> None:
    err = _refused(tmp_path, '[[nodes]]\nname = "gwangju 1/a"\n')
    assert "nodes[0] (gwangju 1/a).name" in str(err)


def test_farm_device_clashing_with_a_local_device(tmp_path: Path) -> None:
    path = _write(tmp_path, _node('{ chip = "furiosa-rngd", id = "cpu0" }'))
    with pytest.raises(FarmFileError) as info:
        Inventory.build([path], node="gwangju-1", plugins=[CpuPlugin()])
    assert str(path) in str(info.value) and "'cpu0'" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FarmFileError, match="file not found"):
        Inventory.build([tmp_path / "nope.toml"], include_local=False)


def test_nothing_starts_on_error(tmp_path: Path) -> None:
    """A bad farm file is refused before any plugin discovers or opens a device."""

    class Spy(CpuPlugin):
        discovered = False

        def discover(self, node: str):
            Spy.discovered = True
            return super().discover(node)

    good = _write(tmp_path, GOOD, "good.toml")
    bad = _write(tmp_path, _node('{ chip = "furiosa-rngd", count = 0 }'), "bad.toml")
    with pytest.raises(FarmFileError):
        Inventory.build([good, bad], plugins=[Spy()])
    assert not Spy.discovered
