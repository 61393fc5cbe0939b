"""`migrate --wait` / `evacuate --approve --wait` follow their group (app.cli.migrate.follow):
they return once the group ends, on SQLite and PostgreSQL alike (a read must not keep seeing
the state it saw first), and print a task's line only when that line changes, however many
tasks the group has."""
import threading

import pytest

from app import status
from app.cli import migrate as migrate_cli
from app.extensions import db
from app.models import MigrationGroup, MigrationTask
from tests.fixtures.rack import rack  # noqa: F401 - a fixture


@pytest.fixture
def database_url(db_url):
    return db_url


def test_it_follows_a_group_to_its_end_printing_each_change_once(app, rack, capsys,
                                                                 monkeypatch):
    nodes, servers = rack
    monkeypatch.setattr(migrate_cli, "FOLLOW_POLL_S", 0.01)
    monkeypatch.setattr(migrate_cli, "PROGRESS_EVERY_S", 0.01)
    with app.app_context():
        group = MigrationGroup(status=status.MIGRATION_RUNNING, options={"mode": "live"})
        for name in ("web", "db"):
            group.tasks.append(MigrationTask(
                server_id=servers[name], source_id=nodes["node1"], destination_id=nodes["node2"],
                mode="live", status=status.MIGRATION_RUNNING, progress={"percent": 10.0}))
        db.session.add(group)
        db.session.commit()
        group_id, web_task = group.id, group.tasks[0].id
    printed = threading.Event()
    real_echo = migrate_cli.click.echo

    def echo(line):
        real_echo(line)
        printed.set()

    monkeypatch.setattr(migrate_cli.click, "echo", echo)

    def follow():
        with app.app_context():
            migrate_cli.follow(group_id, quiet=False)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        assert printed.wait(30), "follow printed nothing"
        assert thread.is_alive()  # the group still runs: it keeps following
        with app.app_context():
            db.session.get(MigrationTask, web_task).progress = {"percent": 60.0}
            db.session.commit()
            printed.clear()
            assert printed.wait(30), "follow did not print the new progress"
            db.session.get(MigrationGroup, group_id).status = status.MIGRATION_FINISHED
            db.session.commit()
        thread.join(30)
        assert not thread.is_alive(), "follow did not see the group end"
    finally:
        with app.app_context():  # never leave the thread polling a test database
            db.session.get(MigrationGroup, group_id).status = status.MIGRATION_FINISHED
            db.session.commit()
        thread.join(30)
    lines = capsys.readouterr().out.splitlines()
    assert lines.count("  web: running  10%") == 1 and lines.count("  db: running  10%") == 1
    assert lines.count("  web: running  60%") == 1
    assert len(lines) == 3, lines
