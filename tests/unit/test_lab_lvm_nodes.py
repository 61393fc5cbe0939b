"""The lab's LVM nodes (lab/lvmnode.py): lvm1 keeps the names it always had, lvm2.. get
their own, and a count outside 0..MAX_LVM_NODES is refused (the lab proves the VMs boot:
tests/lab/test_lvm_two_nodes.py)."""
import pytest

from lab.common import MAX_LVM_NODES, Instance, LabError
from lab.lvmnode import LvmNode, lvm_count, lvm_node_number, lvm_nodes


def test_lvm1_keeps_its_folder_taps_address_and_macs():
    inst = Instance("unit", 79)
    vm = LvmNode(inst)
    assert (vm.name, vm.address, vm.mgmt_tap, vm.guest_tap) == (
        "lvm1", "10.79.0.200", "unit-lm", "unit-lg")
    assert vm.dir.endswith("/unit/lvm") and (vm.mac(1), vm.mac(2)) == (
        "52:54:00:fe:4f:01", "52:54:00:fe:4f:02")


def test_every_lvm_node_has_names_of_its_own_that_fit_an_interface():
    inst = Instance("ferrytest", 78)
    vms = lvm_nodes(inst, MAX_LVM_NODES)
    for attr in ("name", "address", "dir", "mgmt_tap", "guest_tap", "host_key"):
        assert len({getattr(vm, attr) for vm in vms}) == MAX_LVM_NODES, attr
    assert len({vm.mac(nic) for vm in vms for nic in (1, 2)}) == 2 * MAX_LVM_NODES
    assert max(len(vm.mgmt_tap) for vm in vms) <= 15
    hosts = inst.hosts_file()
    assert all(f"{vm.address} {vm.name}\n" in hosts for vm in vms)


@pytest.mark.parametrize("state, count", [({}, 0), ({"lvm_node": True}, 1),
                                          ({"lvm_node": False}, 0),
                                          ({"lvm_node": True, "lvm_nodes": 2}, 2)])
def test_it_reads_how_many_lvm_nodes_a_saved_lab_has(state, count):
    assert lvm_count(state) == count


@pytest.mark.parametrize("count", [-1, MAX_LVM_NODES + 1])
def test_it_refuses_a_number_of_lvm_nodes_it_cannot_run(count):
    with pytest.raises(LabError, match="LVM nodes"):
        lvm_nodes(Instance("unit", 79), count)


@pytest.mark.parametrize("name, k", [("lvm1", 1), ("lvm2", 2), ("lvm0", None),
                                     (f"lvm{MAX_LVM_NODES + 1}", None), ("lvm", None),
                                     ("node1", None), ("lvm1x", None)])
def test_it_tells_an_lvm_node_by_its_name(name, k):
    assert lvm_node_number(name) == k
