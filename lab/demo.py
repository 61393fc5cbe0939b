"""`make demo`: a 3-node lab with servers, registered in Ferry, served with a worker.

Transfers run with TLS on, as in the tests: Ferry's CA is made once in the
instance folder (`pki init`) and every node without a valid certificate of it
is issued one (`pki issue`) after the sync.

    python -m lab.demo [--port 8080] [--lab-name ferrylab --lab-net 77] [--no-serve]

Idempotent: a rerun reuses the lab, its servers and the registrations. Ctrl-C
stops the web server and the worker it started (the lab stays up; `make
lab-down` removes it).
"""
import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERRY_LAB = os.path.join(ROOT, "lab", "ferry-lab")
DEMO_PASSWORD = "ferry-demo"

# (node, name, format, stopped): running and stopped, raw and qcow2, on every node.
DEMO_SERVERS = [
    ("node1", "web-1", "raw", False),
    ("node1", "db-1", "qcow2", False),
    ("node2", "mail-1", "raw", True),
    ("node2", "build-1", "qcow2", False),
    ("node3", "archive-1", "qcow2", True),
]


def lab(args, *argv, timeout=900):
    """Run ferry-lab for the demo's lab instance and return its stdout."""
    env = dict(os.environ, FERRY_LAB_NAME=args.lab_name, FERRY_LAB_NET=str(args.lab_net))
    proc = subprocess.run([FERRY_LAB, *argv], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        sys.exit(f"ferry-lab {' '.join(argv)} failed:\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def say(message):
    """Progress for the person running `make demo`."""
    print(f"==> {message}", flush=True)


def bring_up_lab(args):
    """Start the lab and the demo servers that are not there yet; return `status --json`."""
    say(f"lab {args.lab_name}: {args.nodes} nodes on 10.{args.lab_net}.0.0/24")
    lab(args, "up", "--nodes", str(args.nodes))
    existing = {s["name"]: s for s in json.loads(lab(args, "servers", "--json"))}
    for node, name, fmt, stopped in DEMO_SERVERS:
        if name not in existing:
            say(f"server {name} on {node} ({fmt}, {'stopped' if stopped else 'running'})")
            lab(args, "mkserver", node, name, "--format", fmt, *(["--stopped"] if stopped else []), "--json")
        elif not stopped and existing[name]["state"] != "running":
            # A lab repaired after its processes were killed keeps the definitions, not the
            # guests: a demo server meant to run is started again, wherever it now is.
            say(f"starting {name} on {existing[name]['node']}")
            lab(args, "exec", existing[name]["node"], "--", "virsh", "start", name)
    return json.loads(lab(args, "status", "--json"))


def register(app, status):
    """Register the lab's nodes and IP blocks, sync them, and create the demo admin."""
    from app import upgrade_database
    from app.errors import FerryError
    from app.extensions import db
    from app.models import ComputeResource, IpBlock, User
    from app.services import certificates, inventory, resources

    upgrade_database(app)
    with app.app_context():
        if certificates.ca_certificate() is None:  # before the sync, which judges certificates
            say(f"created Ferry's CA: {certificates.init_ca()}")
        by_name = {}
        for node in status["nodes"]:
            resource = db.session.scalar(db.select(ComputeResource).filter_by(name=node["name"]))
            if resource is None:
                resource = resources.add(node["name"], node["address"], node["user"], status["ssh_key"],
                                         node["port"], storage_tags=node.get("storage_tags", []),
                                         expect_fingerprint=node.get("host_key_fingerprint"))
                say(f"registered {resource.name}, pinned host key {resource.host_key_fingerprint}")
            by_name[node["name"]] = resource
        for spec in status.get("ip_blocks", []):
            block = db.session.scalar(db.select(IpBlock).filter_by(name=spec["name"])) or IpBlock(name=spec["name"])
            block.cidr, block.gateway = spec["cidr"], spec.get("gateway")
            block.compute_resources = [by_name[n] for n in spec["nodes"] if n in by_name]
            db.session.add(block)
        db.session.commit()
        for resource in by_name.values():
            try:
                summary = inventory.sync(resource.id)
                say(f"synced {resource.name}: {summary['servers']} servers")
            except FerryError as exc:
                say(f"sync of {resource.name} failed: {exc}")
        issue_certificates(status, by_name)
        admin = db.session.scalar(db.select(User).filter_by(username="admin")) or User(username="admin")
        admin.role = "admin"
        admin.set_password(DEMO_PASSWORD)
        db.session.add(admin)
        db.session.commit()


def issue_certificates(status, by_name):
    """Give every node without a valid certificate of Ferry's CA one (`pki issue`), so the
    demo's moves run with TLS like the tests'. The sync just judged them: a rerun issues none."""
    from app.errors import FerryError
    from app.services import certificates

    for node in status["nodes"]:
        resource = by_name[node["name"]]
        if certificates.has_valid_certificate(resource):
            say(f"{resource.name}: TLS on, certificate valid until "
                f"{resource.facts['tls'].get('not_after')}")
            continue
        if not node.get("transfer_tls_dirs"):
            say(f"{resource.name}: TLS off, the node has no certificate folders of its own "
                "(a lab built before them: `make lab-down`, then `make demo`)")
            continue
        try:
            verdict = certificates.issue(resource.id)
        except FerryError as exc:
            say(f"{resource.name}: TLS off, issuing its certificate failed: {exc}")
            continue
        say(f"{resource.name}: TLS on, certificate issued, valid until {verdict.get('not_after')}"
            if verdict.get("valid") else f"{resource.name}: TLS off: {verdict.get('reason')}")


def demo_secret_key(instance):
    """The demo's session-signing key: made once in the instance folder (mode 0600), then reused.

    Ferry refuses its public default key; reusing the file keeps demo sessions valid across runs.
    """
    path = os.path.join(instance, "demo-secret-key")
    if not os.path.exists(path):
        os.makedirs(instance, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    with open(path) as handle:
        return handle.read().strip()


def wait_for_http(url, timeout=30):
    """Wait until the app answers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            time.sleep(0.3)
    return False


def serve(args, env):
    """Run gunicorn and the worker until Ctrl-C (or SIGTERM), then stop both by PID."""
    python = sys.executable
    web = subprocess.Popen([python, "-m", "gunicorn", "--bind", f"127.0.0.1:{args.port}",
                            "--workers", "2", "--access-logfile", "-", "wsgi:app"], cwd=ROOT, env=env)
    worker = subprocess.Popen([python, "-m", "worker"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{args.port}/"
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        if not wait_for_http(url + "login"):
            say("the web server did not start")
        print(f"\nFerry is running on {url}\n  login: admin / {DEMO_PASSWORD}\n  (Ctrl-C stops the app "
              "and the worker; `make lab-down` removes the lab)\nREADY " + url, flush=True)
        while not stopping and web.poll() is None and worker.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (web, worker):
            if proc.poll() is None:
                proc.terminate()
        for proc in (web, worker):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    say("stopped")


def main(argv=None):
    """Parse options, build the demo, serve it."""
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--lab-name", default=os.environ.get("FERRY_DEMO_LAB_NAME", "ferrylab"))
    parser.add_argument("--lab-net", type=int, default=int(os.environ.get("FERRY_DEMO_LAB_NET", "77")))
    parser.add_argument("--instance", default=os.path.join(ROOT, "instance"),
                        help="instance folder (database, known_hosts)")
    parser.add_argument("--redis-url", default=os.environ.get("FERRY_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--no-serve", action="store_true", help="set everything up, then exit")
    args = parser.parse_args(argv)

    instance = os.path.abspath(args.instance)
    env = dict(os.environ, FERRY_INSTANCE_PATH=instance, FERRY_REDIS_URL=args.redis_url,
               FERRY_SECRET_KEY=os.environ.get("FERRY_SECRET_KEY") or demo_secret_key(instance))
    env.pop("FERRY_LAB_NAME", None)  # the app never needs the lab; keep the two apart
    os.environ.update({k: env[k] for k in ("FERRY_INSTANCE_PATH", "FERRY_REDIS_URL", "FERRY_SECRET_KEY")})
    sys.path.insert(0, ROOT)

    status = bring_up_lab(args)
    from app import create_app
    register(create_app(), status)
    if not args.no_serve:
        serve(args, env)


if __name__ == "__main__":
    main()
