"""`python -m bench --quick` on the test lab: every figure runs and writes results a reader can use.

This checks that the benchmark works and that its JSON holds what bench.md quotes, never a
speed: the numbers of a quick run on a busy machine mean nothing (`make bench` measures).
"""
import json
import os
import subprocess
import sys

import pytest

from bench import RESULTS, ROOT
from bench.__main__ import FIGURES
from tests.fixtures.app import _postgres_url
from tests.fixtures.fleet import forget_issued_certificates

pytestmark = pytest.mark.lab


def run_quick(module, lab, timeout):
    """Run `python -m <module> --quick` against the session's lab and the test database."""
    env = dict(lab.env, FERRY_BENCH_DATABASE_URL=_postgres_url())
    try:
        proc = subprocess.run([sys.executable, "-m", module, "--quick"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        # The benchmarks give the lab's nodes certificates from a CA of their own
        # (bench/tls.py): the session's CA issues its own again before the next lab test
        # relies on them (test_tls asserts every node holds one signed by it).
        forget_issued_certificates()
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def load(name):
    """A results document and its Markdown summary."""
    with open(os.path.join(RESULTS, f"{name}.json")) as handle:
        document = json.load(handle)
    with open(os.path.join(RESULTS, f"{name}.md")) as handle:
        return document, handle.read()


def is_summary(stats):
    """A median-and-spread summary as bench.stats.summary makes it."""
    return (isinstance(stats, dict) and stats["n"] >= 1
            and stats["min"] <= stats["median"] <= stats["max"])


def test_it_runs_every_figure_quickly_and_writes_valid_results(lab):
    run_quick("bench", lab, timeout=1200)  # tls_cost adds four moves, user_paths eight

    doc, summary_md = load("bench-short")
    assert doc["mode"] == "quick" and doc["errors"] == {}
    assert set(doc["figures"]) == set(FIGURES)
    f = doc["figures"]
    overhead = f["overhead"]
    assert is_summary(overhead["ratio"]) and overhead["ratio"]["median"] > 0
    pair = overhead["pairs"][0]
    assert pair["ferry"]["ok"] and pair["virsh"]["ok"], pair
    assert pair["ferry"]["route"] != pair["virsh"]["route"]  # the server went back and forth
    for key, size in f["user_paths"]["sizes"].items():  # API, CLI and virsh each moved it
        pair = size["pairs"][0]
        assert all(pair[side]["ok"] for side in ("api", "cli", "virsh")), (key, pair)
        assert {"preflight_ms", "migrate_ms", "before_ms", "after_ms"} <= set(
            pair["cli"]["phases"]), pair["cli"]["phases"]
        assert is_summary(size["api_ratio"]) and is_summary(size["cli_ratio"])
    assert f["user_paths"]["sizes"]["large"]["server"]["fill_mib"] > 0
    assert isinstance(f["user_paths"]["cli_met"], bool)
    convergence = f["convergence"]
    assert convergence["pairs"][0]["ferry"]["ok"], convergence["pairs"][0]
    assert is_summary(convergence["ratio"])
    run = f["link_eta"]["runs"][0]
    assert run["ok"] and run["bytes"] > 0 and run["throughput_bps"] > 0
    assert is_summary(f["link_eta"]["link_use"]["ratio"])
    assert is_summary(f["link_eta"]["eta"]["error_at_start"])
    evacuation = f["evacuation"]["pairs"][0]
    assert evacuation["ok"], evacuation
    assert {dest for _, dest, _ in evacuation["moves"]} <= {"node2", "node3"}
    assert evacuation["bound_s"] > 0 and evacuation["makespan_s"] > 0
    pages = f["control_plane"]["pages"]
    assert all(pages["p95_s"][p] > 0 for p in ("dashboard", "servers", "static"))
    assert is_summary(f["control_plane"]["planning"]["ratio"])
    for mode in ("live", "offline"):
        pair = f["tls_cost"][mode]["pairs"][0]
        assert pair["tls"]["ok"] and pair["plain"]["ok"], pair
    offline = f["offline_eta"]  # offline moves, each with its estimate and the model's
    assert offline["moves"] and all(m["ok"] and m["model_s"] for m in offline["moves"])
    assert offline["learned_moves"] >= 1 and is_summary(offline["error"])  # tls_cost's teach
    again = f["eta_repeat"]["runs"]  # one busy guest there and back: the second learns
    assert [r["trip"] for r in again] == [0, 1] and all(r["ok"] for r in again), again
    assert again[0]["dirty_rate_from"] is None
    if again[0]["seen_dirty_bps"]:  # libvirt measured it (a second pass): the next preflight has it
        assert again[1]["dirty_rate_from"] == "last move", again
        assert again[1]["preflight_dirty_bps"] == again[0]["seen_dirty_bps"], again
    for figure in ("overhead", "convergence", "evacuation", "offline_eta", "eta_repeat"):
        assert isinstance(f[figure]["met"], bool)
    assert "| Overhead: Ferry live / bare virsh |" in summary_md
    assert not [s for s in lab.servers() if s["name"].startswith("bench-")]  # cleaned up
