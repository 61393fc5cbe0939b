"""`python -m bench.faults --quick` on the test lab: a few injected faults and a little fuzzing.

Never losing a server is asserted; the other invariants each injection checked are in the
results (and in the failure message), because the short run is about the suite working.
"""
import pytest

from tests.lab.test_bench import load, run_quick

pytestmark = pytest.mark.lab


def test_it_injects_faults_checks_the_servers_and_fuzzes(lab):
    run_quick("bench.faults", lab, timeout=420)

    doc, summary_md = load("faults-short")
    summary = doc["summary"]
    assert doc["errors"] == []
    assert summary["injections"] == 4 == len(doc["injections"])
    assert not [e for e in doc["injections"] if "harness_error" in e]
    for entry in doc["injections"]:
        assert entry["injected"] and entry["tasks"], entry
    assert summary["lost"] == 0, summary_md
    fuzz = doc["fuzz"]
    assert not fuzz.get("skipped"), fuzz["skipped"]  # the webhook and the API exist: fuzz them
    assert fuzz["inputs"] >= 500
    assert fuzz["server_errors"] == 0, fuzz["server_error_samples"]
    assert fuzz["actions"] == 0, fuzz["action_samples"]
    assert "injections:" in summary_md and not [s for s in lab.servers()
                                                 if s["name"].startswith("bench-")]
