"""The session's order (tests/fixtures/lab.py): the unit tests first, so the LVM node can come
up beside them, then the LVM modules, then everything else, each group in its own order."""
from types import SimpleNamespace

from tests.fixtures import lab as lab_fixtures


def item(nodeid):
    module = nodeid.split("::")[0].removesuffix(".py").replace("/", ".")
    return SimpleNamespace(nodeid=nodeid, module=SimpleNamespace(__name__=module))


def config(collect_only):
    return SimpleNamespace(option=SimpleNamespace(collectonly=collect_only))


def starts(monkeypatch):
    """The early starts the hook asks for (recorded, not run: this session has its own)."""
    calls = []
    monkeypatch.setattr(lab_fixtures, "_boot_lvm_node_early", lambda: calls.append(1))
    return calls


def test_unit_tests_come_first_then_the_lvm_modules_then_the_rest_each_in_order(monkeypatch):
    started = starts(monkeypatch)
    ids = ["tests/browser/test_pages.py::test_a", "tests/lab/test_api_lab.py::test_b",
           "tests/lab/test_lvm_node.py::test_c", "tests/lab/test_migration_lab.py::test_d",
           "tests/unit/test_estimation.py::test_e", "tests/lab/test_lvm_sync.py::test_f",
           "tests/unit/test_pages.py::test_g"]
    items = [item(i) for i in ids]
    lab_fixtures.pytest_collection_modifyitems(config(collect_only=True), items)
    assert [i.nodeid.rsplit("::", 1)[1] for i in items] == [
        "test_e", "test_g", "test_c", "test_f", "test_a", "test_b", "test_d"]
    assert started == []  # only listing the tests starts nothing
    lab_fixtures.pytest_collection_modifyitems(config(collect_only=False), items)
    assert started == [1]


def test_no_early_start_without_unit_tests_to_hide_it_behind(monkeypatch):
    started = starts(monkeypatch)
    items = [item("tests/lab/test_lvm_node.py::test_c"), item("tests/lab/test_lab.py::test_h")]
    lab_fixtures.pytest_collection_modifyitems(config(collect_only=False), items)
    assert [i.nodeid for i in items] == ["tests/lab/test_lvm_node.py::test_c",
                                         "tests/lab/test_lab.py::test_h"]
    assert started == []
    lab_fixtures.pytest_collection_modifyitems(
        config(collect_only=False), [item("tests/unit/test_pages.py::test_g")])
    assert started == []  # nor without LVM tests to start it for
