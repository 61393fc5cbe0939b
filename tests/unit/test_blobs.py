"""The typed JSON blobs (app/blobs.py): rows written before the types read as they are, what a
writer stores reads back the same, and the models hand readers the typed form."""
from app import blobs, status
from app.models import Evacuation, MigrationGroup, MigrationTask, WebhookEvent

# As the engine and the services wrote them before app/blobs.py existed.
OLD_LIVE_PROGRESS = {"percent": 42.5, "elapsed_ms": 1000, "data_total": 10, "data_processed": 4,
                     "data_remaining": 6, "memory_total": 8, "memory_processed": 3,
                     "memory_remaining": 5, "disk_total": 0, "disk_processed": 0,
                     "disk_remaining": 0, "dirty_rate_bps": 1.5, "bps": 2.5, "iteration": 2,
                     "throttle": 0, "history": [[0.5, 5, 6]]}
OLD_ETA = {"preflight": {"seconds": 12.0, "low": 10.0, "high": 15.0, "converges": True,
                         "expected_downtime_ms": 30, "passes": 3, "reason": "ok"},
           "history": [{"at_s": 1.0, "remaining_s": 9.0, "low_s": 8.0, "high_s": 11.0,
                        "converges": True, "percent": 30.0}]}
OLD_PLAN = {"live": True, "preserve_ip": False,
            "moves": [{"server_id": 1, "server": "web", "destination_id": 2,
                       "destination": "node2", "mode": "live", "reasons": ["most free memory"]}],
            "unplaced": [{"server_id": 3, "server": "db", "reason": "no room"}]}


def test_old_rows_read_as_they_are_and_write_back_the_keys_they_had():
    progress = blobs.Progress.of(OLD_LIVE_PROGRESS)
    assert progress.percent == 42.5 and progress.history == [[0.5, 5, 6]]
    assert progress.phase is None
    assert {k: v for k, v in progress.to_json().items() if k in OLD_LIVE_PROGRESS} \
        == OLD_LIVE_PROGRESS

    eta = blobs.Eta.of(OLD_ETA)
    # Before calibration a prediction had no model_s, a live point no model_remaining_s.
    assert eta.preflight.raw_s == 12.0 and eta.history[0].raw_remaining_s == 9.0
    assert eta.live is None and eta.to_json()["preflight"]["seconds"] == 12.0

    plan = blobs.EvacuationPlan.of(OLD_PLAN)
    assert [m.server for m in plan.moves] == ["web"] and plan.moves[0].memory_mib is None
    assert plan.unplaced[0].reason == "no room" and plan.preserve_ip is False
    again = plan.to_json()
    assert again["unplaced"] == OLD_PLAN["unplaced"] and again["moves"][0]["reasons"] \
        == ["most free memory"]


def test_missing_blobs_read_as_defaults_and_unknown_keys_are_dropped():
    assert blobs.Progress.of(None).percent is None and blobs.Progress.of(None).history == []
    assert blobs.Eta.of(None) == blobs.Eta()
    assert blobs.TaskResult.of({"bytes": 5, "someday": 1}).to_json()["bytes"] == 5
    assert "someday" not in blobs.TaskResult.of({"someday": 1}).to_json()
    options = blobs.GroupOptions.of({})
    assert options.preserve_ip is True and options.mode is None and not options.live
    assert "evacuation_id" not in options.to_json()
    assert blobs.GroupOptions(mode=status.MODE_LIVE, evacuation_id=7).to_json()["evacuation_id"] == 7


def test_a_live_eta_keeps_a_bounded_history():
    eta = blobs.Eta()
    for i in range(blobs.ETA_HISTORY + 10):
        eta = eta.with_point(blobs.EtaPoint(at_s=float(i), remaining_s=1.0))
    assert eta.live.at_s == blobs.ETA_HISTORY + 9
    assert len(eta.history) == blobs.ETA_HISTORY + 1 and eta.history[-1] == eta.live
    stored = eta.to_json()
    assert blobs.Eta.of(stored) == eta


def test_the_models_give_readers_the_typed_form():
    task = MigrationTask(progress={"percent": 30.0, "phase": "copy"},
                         result={"downtime_ms": 40, "bytes": 9}, eta=None)
    assert task.progress_record.percent == 30.0 and task.progress_record.phase == "copy"
    assert task.result_record.downtime_ms == 40 and task.result_record.phases == {}
    assert task.eta_record.preflight is None
    group = MigrationGroup(options={"mode": "offline", "evacuation_id": 4})
    assert group.options_record.evacuation_id == 4 and group.options_record.mode == "offline"
    assert Evacuation(plan=OLD_PLAN).plan_record.moves[0].destination == "node2"
    assert WebhookEvent(alert={"name": "", "labels": {"alertname": "NodeDown"}}).alert_name \
        == "NodeDown"
    assert WebhookEvent(alert={"name": "HostDown"}).alert_name == "HostDown"
    assert WebhookEvent(alert=None).alert_name is None
