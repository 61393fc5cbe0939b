"""Preflight refusals into the lab's LVM node, from what lvm1 really has (issue 12).

A stopped server on node1 with a raw disk larger than lvm1's volume group has free, and
with more data allocated than lvm1's thin pool could take, is refused a copy into LVM
("volume group too small") and into thin LVM ("thin pool too full"), each with its reason,
and nothing changes on either node. (A live move into LVM is refused from the database
alone: tests/lab/test_engine_refusals.py.)
"""
import json

import pytest

from app import status
from tests.fixtures.fleet import images, migrate, preflight_results, sync, where
from tests.lab.test_lvm_conversions import lab, lvs  # noqa: F401 - the module's lab: with lvm1

pytestmark = pytest.mark.lab
GIB = 1 << 30
NAME = "lvm-too-big"


def room(lab):
    """(the volume group's free bytes, the thin pool's size in bytes) on lvm1."""
    vg = json.loads(lab.exec("lvm1", "vgs", "--reportformat", "json", "--units", "b",
                             "--nosuffix", "-o", "vg_free", "ferry", check=True).stdout)
    return int(vg["report"][0]["vg"][0]["vg_free"]), lvs(lab)["thinpool"][1]


def refused(app, fleet, to_type):
    """Ask for the move into lvm1 converting to `to_type`; return (task, failing checks)."""
    report = migrate(app, fleet, [NAME], "lvm1", live=False, convert_to=to_type)
    [task] = report["tasks"]
    assert report["status"] == status.MIGRATION_FAILED, task
    checks = preflight_results(app, task["task"])
    return task, {name for name, result in checks.items() if result == "fail"}


def test_it_refuses_a_copy_into_lvm_or_thin_lvm_that_would_not_fit_with_the_reason(
        app, lab, lab_server, fleet):
    vg_free, pool_size = room(lab)
    size_gib = max(vg_free, pool_size) // GIB + 1  # more than either could hold
    server = lab_server("node1", NAME, stopped=True, format="raw", disk=size_gib)
    # Allocate as much data as the thin pool holds (a thin copy takes what is allocated).
    lab.exec("node1", "fallocate", "-l", str(pool_size), server["disk"]["path"], check=True)
    sync(app, {n: fleet[n] for n in ("node1", "lvm1")})
    before = lvs(lab)

    task, failing = refused(app, fleet, status.STORAGE_LVM)
    assert failing == {"lvm-space"}, task["error"]
    assert "volume group too small" in task["error"], task["error"]

    task, failing = refused(app, fleet, status.STORAGE_THINLVM)
    assert failing == {"lvm-space"}, task["error"]
    assert "thin pool too full" in task["error"], task["error"]

    assert task["error"].startswith("Preflight failed:") and task["started_at"] is None
    assert lvs(lab) == before
    assert where(lab, NAME) == {"node1": "shut off"}
    assert [f for f in images(lab, "node1") if NAME in f]
