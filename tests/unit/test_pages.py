"""Pages: dashboard, servers list with filters (page and htmx fragment), compute resource detail."""
from datetime import datetime, timedelta, timezone

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


def queries_of(app, client, url, headers=None):
    """The SQL statements one request runs, and its HTML."""
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.get(url, headers=headers or {})
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


def test_the_servers_list_runs_as_many_queries_for_500_servers_as_for_50(app, client, charlie,
                                                                         login):
    login(client, "charlie")
    grow(app, "s", resources=5, servers=50, migrations=0)
    small, _ = queries_of(app, client, "/servers/")
    grow(app, "ss", resources=5, servers=450, migrations=0)
    large, page = queries_of(app, client, "/servers/")
    # the user, the page's rows with how many match and their resource names, their disks
    # with the resources to filter by: none of them once per server
    assert len(large) == len(small) == 3, large
    assert sum("FROM disk" in statement for statement in large) == 1
    assert page.count("<tr data-server=") == 50 and "1–50 of 500 servers" in page
    assert page.count('class="disk"') == 50  # every row's disk, read in that one query
    fragment = client.get("/servers/?page=10", headers={"HX-Request": "true",
                                                          "HX-Target": "servers-table"})
    assert fragment.get_data(as_text=True).count("<tr data-server=") == 50


def test_it_lists_every_disk_of_a_server_in_order_and_a_server_without_one(app, client,
                                                                           charlie, login,
                                                                           inventory):
    # The disks are read for the whole page at once: a server with two disks is one line
    # with both in order, and one with none is still listed.
    with app.app_context():
        web = db.session.scalar(db.select(Server).filter_by(name="web<b>1</b>"))
        web.disks = [Disk(target="vdb", format="raw", path="/img/web-b.raw",
                          storage_type="file-raw", virtual_size=2048, allocation=1024),
                     Disk(target="vda", format="qcow2", path="/img/web-a.qcow2",
                          storage_type="file-qcow2", virtual_size=4096, allocation=1024)]
        db.session.commit()
    login(client, "charlie")
    page = client.get("/servers/").get_data(as_text=True)
    assert page.count("<tr data-server=") == 2 and "1–2 of 2 servers" in page
    row = page[page.index('data-server="web&lt;b&gt;1&lt;/b&gt;"'):]
    row = row[:row.index("</tr>")]
    assert row.index("/img/web-a.qcow2") < row.index("/img/web-b.raw")
    row = page[page.index('data-server="db-1"'):]
    assert "none" in row[:row.index("</tr>")]


def test_a_filtered_page_past_the_end_shows_the_last_page_of_the_filter(app, client, charlie,
                                                                        login):
    login(client, "charlie")
    grow(app, "f", resources=2, servers=120, migrations=0)  # 40 stopped, 80 running
    statements, page = queries_of(app, client, "/servers/?state=stopped&page=7")
    assert page.count("<tr data-server=") == 40 and "1–40 of 40 servers" in page
    assert len(statements) == 6  # the user, the empty page, the resources (read with the
    # disks it does not have), the count, page 1, its disks with the resources
    _, nothing = queries_of(app, client, "/servers/?q=no-such-server")
    assert "0 servers" in nothing and "No servers" in nothing


def test_the_dashboard_runs_a_fixed_number_of_queries_and_clamps_the_page(app, client, charlie,
                                                                           login):
    login(client, "charlie")
    grow(app, "d", resources=60, servers=300, migrations=3)
    statements, page = queries_of(app, client, "/")
    # the user, the page of resources with their counts and the total, and in one query the
    # running migrations with their names, the jobs and the workers' last beat
    assert len(statements) == 3, statements
    assert page.count("/migrations/tasks/") == 3 and "1–50 of 60 compute resources" in page
    for name, counts in (("d000", "0 running / 5"), ("d001", "5 running / 5")):
        row = page[page.index(f'data-resource="{name}"'):]  # d000: servers 0, 60, ... 240
        assert counts in row[:row.index("</tr>")]  # (every third server is stopped)
    statements, last = queries_of(app, client, "/?page=99")  # past the end: the last page
    assert last.count("<tr data-resource=") == 10 and "51–60 of 60" in last
    assert len(statements) == 5  # the empty page, the count, the last page


def test_the_dashboard_lists_its_jobs_newest_first_and_its_migrations_in_order(app, client,
                                                                              charlie, login):
    # The running migrations, the recent jobs and the last beat come back from one query whose
    # parts have no order of their own: each list must still be in its order, and complete.
    from app.dashboard.views import JOBS_SHOWN, MIGRATIONS_SHOWN
    from app.models import Job
    grow(app, "o", resources=2, servers=MIGRATIONS_SHOWN + 2, migrations=MIGRATIONS_SHOWN + 2)
    with app.app_context():
        db.session.add_all(Job(name=f"job-{i:02d}", status=status.JOB_FINISHED,
                               created_at=datetime.now(timezone.utc) - timedelta(minutes=i))
                           for i in range(JOBS_SHOWN + 3))
        db.session.commit()
        ids = db.session.scalars(db.select(MigrationTask.id).order_by(MigrationTask.id)).all()
    login(client, "charlie")
    page = client.get("/").get_data(as_text=True)
    links = [int(piece.split('"')[0]) for piece in page.split("/migrations/tasks/")[1:]]
    assert links == ids[:MIGRATIONS_SHOWN]
    assert f"{MIGRATIONS_SHOWN} of {MIGRATIONS_SHOWN + 2} shown" in page
    names = [piece.split("<")[0] for piece in page.split(" job-")[1:]]
    assert names == [f"{i:02d}" for i in range(JOBS_SHOWN + 2, 2, -1)]  # the last 8 added
    assert "10 min ago" in page and "No worker has ever been seen" in page


def test_the_dashboard_polls_read_only_their_part(app, client, charlie, login):
    login(client, "charlie")
    grow(app, "p", resources=3, servers=6, migrations=1)
    htmx = {"HX-Request": "true"}
    statements, banner = queries_of(app, client, "/?fragment=workers", htmx)
    assert len(statements) == 2 and "No worker" in banner  # the user, the workers' last beat
    statements, table = queries_of(app, client, "/?fragment=resources", htmx)
    assert len(statements) == 2 and table.count("<tr data-resource=") == 3  # the user, the page
    assert "<html" not in table and "Running migrations" not in table


def test_a_kept_table_is_rendered_again_when_anything_it_shows_changes(app, client, charlie,
                                                                         login, inventory):
    # The dashboard's and the list's tables are kept by their whole context: the second read
    # of an unchanged page may come from the cache, a change must never be hidden by it.
    login(client, "charlie")
    for _ in range(2):
        dashboard = client.get("/").get_data(as_text=True)
        servers = client.get("/servers/").get_data(as_text=True)
    assert "0 running / 1" in dashboard[dashboard.index('data-resource="node2"'):]
    assert "db-1" in servers and 'badge-stopped">stopped' in servers
    with app.app_context():
        server = db.session.scalar(db.select(Server).filter_by(name="db-1"))
        server.state, server.name = status.SERVER_RUNNING, "db-renamed"
        node2 = db.session.get(ComputeResource, inventory["node2"])
        node2.last_synced_at = datetime.now(timezone.utc) - timedelta(minutes=5)
        db.session.commit()
    dashboard = client.get("/").get_data(as_text=True)
    row = dashboard[dashboard.index('data-resource="node2"'):]
    row = row[:row.index("</tr>")]
    assert "1 running / 1" in row and "5 min ago" in row
    servers = client.get("/servers/").get_data(as_text=True)
    assert "db-renamed" in servers and "db-1" not in servers
    assert 'badge-stopped">stopped' not in servers
    with app.app_context():
        node2 = db.session.get(ComputeResource, inventory["node2"])
        node2.last_synced_at = datetime.now(timezone.utc) - timedelta(minutes=7)
        db.session.commit()
    dashboard = client.get("/").get_data(as_text=True)  # nothing in the rows but the clock
    assert "7 min ago" in dashboard and "5 min ago" not in dashboard


def test_a_kept_servers_table_is_not_shown_to_a_viewer_with_an_operators_checkboxes(
        app, client, bob, charlie, login, inventory):
    # Whether the rows have checkboxes is part of the kept table's key, not read inside it.
    login(client, "bob")
    assert 'name="server"' in client.get("/servers/").get_data(as_text=True)
    viewer = login(app.test_client(), "charlie")
    assert 'name="server"' not in viewer.get("/servers/").get_data(as_text=True)


def test_a_size_the_node_did_not_report_shows_a_dash_not_an_error():
    # A storage pool's facts without capacity_bytes made a resource's page answer 500.
    import doctest

    from app import templating
    assert doctest.testmod(templating).failed == 0


def test_a_kept_link_is_the_path_of_its_own_script_root_and_values(app):
    # Templates' url_for keeps the paths it built: the same endpoint under another script
    # root (Ferry behind a proxy at /ferry) or with other values is another path, and what
    # cannot be kept (an external URL, a list) is built as url_for builds it.
    from flask import url_for

    from app.templating import link
    with app.test_request_context("/"):
        assert link("servers.index") == "/servers/" == link("servers.index")
        assert link("resources.detail", resource_id=3) == "/resources/3"
        assert link("resources.detail", resource_id=4) == "/resources/4"
        assert link("servers.index", _external=True) == "http://localhost/servers/"
        assert link("servers.index", state=["a", "b"]) == url_for("servers.index",
                                                                 state=["a", "b"])
    with app.test_request_context("/", base_url="http://localhost/ferry"):
        assert link("servers.index") == "/ferry/servers/"
        assert link("resources.detail", resource_id=3) == "/ferry/resources/3"
    with app.test_request_context("/"):
        page = app.jinja_env.from_string("{{ url_for('servers.index', q='a b') }}").render()
        assert page == "/servers/?q=a+b"
    app.config["SERVER_NAME"] = "ferry.example"
    with app.app_context():  # no request: built by url_for, as Flask builds it there
        assert link("servers.index") == url_for("servers.index") == "http://ferry.example/servers/"
