"""Offline moves between two LVM nodes, lvm1 and lvm2 (issue 12): LVM -> thin LVM -> LVM.

A stopped server on a thick logical volume of lvm1 moves to lvm2 converting to thin LVM,
then back to lvm1 converting to LVM. After each hop its disk is `qemu-img compare`-equal
to a reference copy of the original, the destination defines it as a block disk on the
volume of the right type, nothing of it is left on the source, and the thin volume stays
thin (hop, from test_lvm_conversions). The hops join bench/results/storage-matrix.md.

lvm2 boots from the same cached image as lvm1 (another minute or more under TCG), only for
this module, the last of the LVM modules; both are taken down after it
(tests/fixtures/lab.py).
"""
import pytest

from tests.fixtures.lab import bring_up
from tests.lab.test_lvm_conversions import DISK, ROWS, hop, keep_reference, write_matrix

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    """The lab with node1..3, lvm1 and lvm2 (the fleet registers all five)."""
    the_lab = bring_up("--lvm-nodes", "2", timeout=1800, what="the LVM nodes")
    assert {"lvm1", "lvm2"} <= {n["name"] for n in the_lab.status["nodes"]}, the_lab.status
    return the_lab


def test_a_stopped_server_goes_from_lvm_to_thin_lvm_and_back_between_two_lvm_nodes(
        app, lab, lab_server, fleet):
    name = "cv-between"
    server = lab_server("lvm1", name, stopped=True, storage="lvm", disk=DISK)
    path = server["disk"]["path"]
    ref = keep_reference(lab, path, name, source="lvm1", copies=("lvm2",))
    try:
        hop(app, lab, fleet, name, "lvm1", "lvm2", "thinlvm", ref,
            ("block", f"/dev/ferry/{name}", "raw"), "lvm")
        hop(app, lab, fleet, name, "lvm2", "lvm1", "lvm", ref,
            ("block", f"/dev/ferry/{name}", "raw"), "thinlvm")
    finally:
        for node in ("lvm1", "lvm2"):
            lab.exec(node, "rm", "-f", "--", ref)
        if ROWS:
            write_matrix(ROWS)  # with the rows of test_lvm_conversions when it ran before
