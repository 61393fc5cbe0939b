"""Pages: dashboard, servers list with filters (page and htmx fragment), compute resource detail."""
import pytest
from sqlalchemy import event

from app import status
from app.extensions import db
from app.models import ComputeResource, Disk, MigrationGroup, MigrationTask, Server


@pytest.fixture
def inventory(app):
    """Two compute resources with a running and a stopped server (rows only: no node contacted)."""
    with app.app_context():
        node1 = ComputeResource(name="node1", host="10.0.0.11", user="root", key_path="/k",
                                facts={"memory": {"total_mib": 1000, "free_mib": 250},
                                       "os": {"pretty_name": "Debian GNU/Linux 12 (bookworm)"}})
        node2 = ComputeResource(name="node2", host="10.0.0.12", user="root", key_path="/k",
                                status=status.RESOURCE_UNREACHABLE, status_reason="no route to host")
        db.session.add_all([
            node1, node2,
            Server(uuid="00000000-0000-4000-8000-000000000001", name="web<b>1</b>",
                   compute_resource=node1, state=status.SERVER_RUNNING),
            Server(uuid="00000000-0000-4000-8000-000000000002", name="db-1",
                   compute_resource=node2, state=status.SERVER_STOPPED)])
        db.session.commit()
        return {"node1": node1.id, "node2": node2.id}


def test_it_shows_compute_resources_with_status_and_load(client, charlie, login, inventory):
    login(client, "charlie")
    page = client.get("/").get_data(as_text=True)
    assert 'data-resource="node1"' in page and "75 %" in page and "bookworm" in page
    assert "unreachable" in page and "no route to host" in page
    assert "Add compute resource" not in page  # a viewer is not offered what it cannot do


def test_it_filters_servers_by_state_and_resource(client, charlie, login, inventory):
    login(client, "charlie")
    page = client.get("/servers/?state=stopped").get_data(as_text=True)
    assert "db-1" in page and "web&lt;b&gt;1&lt;/b&gt;" not in page
    page = client.get(f"/servers/?resource={inventory['node1']}").get_data(as_text=True)
    assert "web&lt;b&gt;1&lt;/b&gt;" in page and "db-1" not in page


def test_it_serves_only_the_table_to_htmx(client, charlie, login, inventory):
    login(client, "charlie")
    fragment = client.get("/servers/?state=running",
                          headers={"HX-Request": "true", "HX-Target": "servers-table"})
    text = fragment.get_data(as_text=True)
    assert "<html" not in text and "<table" in text and "1 server" in text


def test_it_pages_a_long_servers_list_and_finds_servers_by_name(app, client, charlie, login,
                                                                 inventory):
    from app.servers.views import PAGE_SIZE
    with app.app_context():
        node1 = db.session.get(ComputeResource, inventory["node1"])
        db.session.add_all(Server(uuid=f"00000000-0000-4000-9000-{i:012d}", name=f"vm-{i:04d}",
                                  compute_resource=node1, state=status.SERVER_RUNNING)
                           for i in range(PAGE_SIZE + 30))
        db.session.commit()
    login(client, "charlie")

    first = client.get("/servers/").get_data(as_text=True)
    assert first.count("<tr data-server=") == PAGE_SIZE
    assert f"1–{PAGE_SIZE} of {PAGE_SIZE + 32} servers" in first and 'rel="next"' in first
    second = client.get("/servers/?page=2").get_data(as_text=True)
    assert second.count("<tr data-server=") == 32 and 'rel="prev"' in second
    assert 'rel="next"' not in second and f"vm-{PAGE_SIZE + 29:04d}" in second
    assert client.get("/servers/?page=999").get_data(as_text=True).count("<tr data-server=") == 32

    found = client.get("/servers/?q=0_2").get_data(as_text=True)  # "_" is a letter, not a wildcard
    assert "0 servers" in found
    found = client.get("/servers/?q=M-001").get_data(as_text=True)
    assert found.count("<tr data-server=") == 10 and "1–10 of 10 servers" in found


def test_it_shows_a_compute_resource(client, bob, login, inventory):
    login(client, "bob")
    page = client.get(f"/resources/{inventory['node1']}").get_data(as_text=True)
    assert "node1" in page and "Sync now" in page and "Test connection" in page
    assert client.get("/resources/999").status_code == 404


@pytest.fixture
def database_url(db_url):
    """Every page test runs on SQLite and on PostgreSQL: the dashboard reads facts in SQL."""
    return db_url


def grow(app, prefix, resources, servers, migrations):
    """Add `resources` compute resources holding `servers` servers (a disk each, every third
    stopped) and `migrations` running migration tasks between the first two of them; every
    name starts with `prefix`."""
    with app.app_context():
        nodes = [ComputeResource(name=f"{prefix}{k:03d}", host=f"10.{len(prefix)}.{k // 250}.{k % 250}",
                                 user="root", key_path="/k",
                                 facts={"memory": {"total_mib": 1000, "free_mib": 500},
                                        "os": {"pretty_name": "Debian 12"}, "cpu": {"x": [1] * 50}})
                 for k in range(resources)]
        rows = [Server(uuid=f"00000000-0000-4000-a{len(prefix):03d}-{i:012d}",
                       name=f"{prefix}-{i:05d}",
                       compute_resource=nodes[i % resources], vcpus=1, memory_mib=512,
                       state=status.SERVER_STOPPED if i % 3 == 0 else status.SERVER_RUNNING,
                       disks=[Disk(target="vda", format="qcow2", path=f"/img/{i}.qcow2",
                                   storage_type="file-qcow2", virtual_size=10, allocation=1)])
                for i in range(servers)]
        group = MigrationGroup(status=status.MIGRATION_RUNNING, options={})
        group.tasks = [MigrationTask(server=rows[i], source=nodes[0], destination=nodes[1],
                                     mode="live", status=status.MIGRATION_RUNNING)
                       for i in range(migrations)]
        db.session.add_all(nodes + rows + [group])
        db.session.commit()


def queries_of(app, client, url):
    """The SQL statements one request runs, and its HTML."""
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.get(url)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert response.status_code == 200
    return statements, response.get_data(as_text=True)


def test_it_runs_as_many_queries_for_a_large_fleet_as_for_a_small_one(app, client, charlie,
                                                                       login):
    login(client, "charlie")
    grow(app, "a", resources=3, servers=6, migrations=1)
    small = {url: queries_of(app, client, url)[0] for url in ("/", "/servers/")}

    grow(app, "bb", resources=120, servers=600, migrations=12)
    for url in ("/", "/servers/", "/?page=3", "/servers/?page=4"):
        statements, _ = queries_of(app, client, url)
        assert len(statements) == len(small[url.split("?")[0]]), (url, statements)
    _, dashboard = queries_of(app, client, "/")
    assert dashboard.count("<tr data-resource=") == 50 and "1–50 of 123 compute resources" in dashboard
    assert dashboard.count("/migrations/tasks/") == 13  # every running task, with its names
    _, last = queries_of(app, client, "/?page=3")
    assert last.count("<tr data-resource=") == 23 and 'rel="prev"' in last


def test_it_counts_servers_per_resource_in_sql(app, client, charlie, login, inventory):
    grow(app, "cr", resources=2, servers=6, migrations=0)  # cr000: 0 (stopped), 2, 4; cr001: 1, 3, 5
    with app.app_context():
        node1 = db.session.get(ComputeResource, inventory["node1"])
        db.session.add(Server(uuid="00000000-0000-4000-8000-0000000000ff", name="gone",
                              compute_resource=node1, state=status.SERVER_MISSING))
        db.session.commit()
    login(client, "charlie")
    page = client.get("/").get_data(as_text=True)
    row = page[page.index('data-resource="cr000"'):]
    assert "2 running / 3" in row[:row.index("</tr>")]
    row = page[page.index('data-resource="node1"'):]
    assert "1 running / 1" in row[:row.index("</tr>")]  # a missing server counts for nothing
    row = page[page.index('data-resource="node2"'):]
    assert "0 running / 1" in row[:row.index("</tr>")] and "—" in row[:row.index("</tr>")]
