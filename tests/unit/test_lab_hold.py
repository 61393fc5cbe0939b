"""One test session or benchmark at a time on a lab instance (lab.client.hold).

Two `make test` runs once shared the test lab's nodes: the second one's evacuation moved the
first one's server, and both runs failed with servers where no test had put them.
"""
import os
import subprocess
import sys
import time

import pytest

from lab.client import HELD_ENV, ROOT, hold

HOLDER = """
import sys, time
from lab.client import hold
f = hold("unit-lab", root=sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def no_held(monkeypatch):
    monkeypatch.delenv(HELD_ENV, raising=False)  # restored afterwards: the session's lab keeps its own


def test_a_second_holder_waits_names_the_first_and_gets_it_once_free(tmp_path, no_held):
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        said = []
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            hold("unit-lab", wait_s=0.6, poll_s=0.1, say=said.append, root=str(tmp_path))
        assert time.monotonic() - t0 >= 0.6
        assert f"pid {first.pid}" in str(e.value) and len(said) == 1 and f"pid {first.pid}" in said[0]
        assert os.environ.get(HELD_ENV) is None  # nothing taken
    finally:
        first.kill()
        first.wait()
    f = hold("unit-lab", wait_s=5, poll_s=0.1, root=str(tmp_path))
    try:
        assert f is not None and os.environ[HELD_ENV] == "unit-lab"
        assert (tmp_path / "unit-lab" / ".session").read_text().startswith(f"pid {os.getpid()}:")
        # A child of the holder (a benchmark the tests run) passes without waiting.
        child = subprocess.run([sys.executable, "-c", "import sys; from lab.client import hold; "
                                "print(hold('unit-lab', wait_s=0.2, root=sys.argv[1]))",
                                str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                               env=dict(os.environ), timeout=30)
        assert child.stdout.strip() == "None", child.stderr
        # Another lab instance is not affected by this one.
        other = hold("unit-lab-2", wait_s=0.2, root=str(tmp_path))
        assert other is not None
        other.close()
    finally:
        f.close()
