"""The fault matrix's plan and report (bench/fault_matrix.py), without the lab."""
from app.services.live import RUNNER as LIVE
from app.services.offline import RUNNER as OFFLINE
from bench.fault_matrix import FAULTS, SHORT, all_cases, markdown, select


def test_it_covers_every_boundary_of_both_runners_with_every_fault():
    cases = all_cases()
    steps = {"live": [s.name for s in LIVE.steps], "offline": [s.name for s in OFFLINE.steps]}
    expected = {(mode, when, step, fault) for mode, names in steps.items() for step in names
                for when in ("before", "after") for fault in FAULTS}
    assert {(c.mode, c.when, c.step, c.fault) for c in cases} == expected
    assert len(cases) == len(expected)  # no case twice
    assert set(SHORT) <= set(cases)


def test_it_selects_cases_by_any_of_several_parts():
    chosen = select(False, "x link-cut, offline:before:copy x worker-kill")
    assert {c.fault for c in chosen} == {"link-cut", "worker-kill"}
    assert [c.key for c in chosen if c.fault == "worker-kill"] == [
        "offline:before:copy x worker-kill"]
    assert select(True, None) == list(SHORT)


def test_it_writes_one_row_per_case_with_its_verdict():
    doc = {"mode": "full", "only": None, "planned": 2, "started_at": "t", "duration_s": 1,
           "machine_at_start": {"loadavg": [1.0]}, "errors": [],
           "settings": {"orphan_after_s": 10, "tick_s": 5, "budget_s": 80},
           "summary": {"cases": 2, "passed": 1},
           "cases": [{"point": "live:before:migrate", "fault": "link-cut", "status": "failed",
                      "route": "node1->node2",
                      "where": {"node1": "running"}, "passed": True, "violations": [],
                      "settle_s": 3.5, "seconds": 40},
                     {"point": "offline:after:copy", "fault": "worker-kill", "status": "running",
                      "where": {}, "passed": False, "violations": ["task still running | x"]}]}
    text = markdown(doc)
    assert ("| live:before:migrate | link-cut | node1->node2 | failed | node1 running | pass | 3.5 "
            "| 40 |") in text
    assert "**FAIL**: task still running / x" in text
