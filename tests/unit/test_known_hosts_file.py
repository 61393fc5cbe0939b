"""The known_hosts file libvirt reads for a node is never seen empty or half-written.

Found by the full make test: a live move failed with "SSH transport error: failed to retrieve
decision to accept host key" because another connection to the same node (a second worker,
or this worker opening source and control side by side) was rewriting the node's
known_hosts file in place: libvirt read it between the truncate and the write, found no key,
and refused the node. Writers replace the file whole instead.
"""
import os
import threading

from app.infra.libvirt import write_known_hosts
from app.infra.ssh import Endpoint

KEYS = ("ssh-ed25519 " + "A" * 68, "ssh-ed25519 " + "B" * 68)  # e.g. a node's key re-pinned


def test_a_reader_never_sees_the_file_without_a_whole_key_while_others_rewrite_it(tmp_path):
    endpoints = [Endpoint("10.78.0.12", 22, "root", "/dev/null", key) for key in KEYS]
    path = write_known_hosts(endpoints[0], str(tmp_path))
    whole = {f"10.78.0.12 {key}\n" for key in KEYS}
    stop, seen = threading.Event(), []

    def writer(first):
        n = first
        while not stop.is_set():  # every call changes the file: no call is skipped
            write_known_hosts(endpoints[n % 2], str(tmp_path))
            n += 1

    def reader():
        for _ in range(20000):
            with open(path) as fh:
                text = fh.read()
            if text not in whole:
                seen.append(text)
        stop.set()

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == [], f"{len(seen)} of 20000 reads found {seen[0]!r}, not a whole key"
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # no temporary file left


def test_it_leaves_a_file_that_already_holds_the_key_alone(tmp_path):
    endpoint = Endpoint("10.78.0.12", 2222, "root", "/dev/null", KEYS[0])
    path = write_known_hosts(endpoint, str(tmp_path))
    inode = os.stat(path).st_ino
    assert write_known_hosts(endpoint, str(tmp_path)) == path
    assert os.stat(path).st_ino == inode
    with open(path) as fh:
        assert fh.read() == f"[10.78.0.12]:2222 {KEYS[0]}\n"
