"""The lab's nodes as Ferry's inventory, seen from a program holding an app: plain helpers the
benchmarks, the fault suite and the tests' fixtures share (tests/fixtures/fleet.py re-exports them,
so bench/ never imports the tests)."""
from app.extensions import db
from app.models import Server
from app.services import inventory


def sync(app, fleet):
    """Sync every node in-process."""
    with app.app_context():
        for rid in fleet.values():
            inventory.sync(rid)


def server_id(app, name):
    """The inventory id of a server by name."""
    with app.app_context():
        return db.session.scalar(db.select(Server).filter_by(name=name)).id
