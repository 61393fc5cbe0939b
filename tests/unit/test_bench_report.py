"""The benchmark's own bookkeeping (no lab): folding a partial run into the last full one."""
import doctest
import json

from bench import report


def test_the_pure_parts_hold_their_worked_examples():
    result = doctest.testmod(report)
    assert result.failed == 0 and result.attempted > 0


def test_a_figure_measured_again_is_listed_under_its_latest_run_only(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", str(tmp_path))
    full = {"figures": {"a": 1, "b": 2}, "errors": {}, "seconds": {"a": 1, "b": 1},
            "started_at": "full"}
    (tmp_path / "bench.json").write_text(json.dumps(full))

    def rerun(figures, when):
        document = {"figures": {f: when for f in figures}, "errors": {},
                    "seconds": {f: 1 for f in figures}, "started_at": when,
                    "machine_at_start": report.machine()}
        report.fold("bench", False, document, 0.0, lambda doc: "")

    rerun(["a", "b"], "first")
    rerun(["a"], "second")
    rerun(["a"], "third")
    folded = json.loads((tmp_path / "bench.json").read_text())
    assert folded["figures"] == {"a": "third", "b": "first"}
    assert [(r["started_at"], r["figures"]) for r in folded["reruns"]] == [
        ("first", ["b"]), ("third", ["a"])]
