"""Fixtures shared by every test module: each family lives in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.lab",  # the live lab: one per test session
    "tests.fixtures.app",  # app, client, runner, databases, Redis, named users
    "tests.fixtures.fleet",  # the lab's nodes as inventory, migration helpers, real workers
]
