"""The p2p pinning commands (app/infra/commands/peer.py): what they install, and that the
wrapper's ssh keeps Ferry's options whatever libvirt appends (checked with the real `ssh -G`)."""
import doctest
import os
import shutil
import subprocess

import pytest

from app.infra.commands import peer

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAI="


def test_it_passes_its_doctests():
    assert doctest.testmod(peer).failed == 0


@pytest.mark.parametrize("bad", [None, "", "ssh-ed25519", "ssh-ed25519 not*base64",
                                 "ssh-ed25519 AAAA\n10.0.0.9 ssh-ed25519 AAAA",
                                 "-oProxyCommand=x AAAA", "ssh-ed25519 \tAAAA"])
def test_it_refuses_anything_but_a_host_key(bad):
    with pytest.raises(ValueError, match="not an SSH host key"):
        peer.install(peer.pin_name("10.0.0.12", 22, bad), bad)


def test_it_installs_one_pinned_line_and_a_wrapper_on_a_real_shell(tmp_path):
    name = peer.pin_name("10.0.0.12", 22, KEY)
    argv = peer.install(name, KEY)
    argv[argv.index(peer.PEER_DIR)] = str(tmp_path / "p2p")  # the shell text is unchanged
    for _ in range(2):  # again over the first: replaced, never appended to
        done = subprocess.run(argv, input=peer.wrapper(name), text=True, capture_output=True)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "p2p" / f"{name}.known_hosts").read_text() == f"ferry-pinned-peer {KEY}\n"
    wrapper = tmp_path / "p2p" / f"{name}.ssh"
    assert wrapper.read_text() == peer.wrapper(name) and wrapper.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in (tmp_path / "p2p").iterdir()) == [f"{name}.known_hosts",
                                                                     f"{name}.ssh"]


def test_libvirts_options_cannot_loosen_the_wrappers_check(tmp_path):
    # The lab's nodes and this check need OpenSSH's client (`make deps` installs it): without
    # it the test fails under CI=true rather than skip, and skips on a developer's machine.
    if shutil.which("ssh") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no OpenSSH client: `make deps` installs it")
        pytest.skip("no OpenSSH client")
    name = peer.pin_name("10.0.0.12", 22, KEY)
    wrapper = tmp_path / "ssh-wrapper"
    wrapper.write_text(peer.wrapper(name))
    # What libvirt's qemu+ssh would append with no_verify=1, plus a known_hosts of its own.
    config = subprocess.run(
        ["sh", str(wrapper), "-G", "-p", "22", "-l", "root", "-T", "-e", "none",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/root/.ssh/known_hosts",
         "--", "10.0.0.12"], capture_output=True, text=True, check=True).stdout
    seen = dict(line.split(" ", 1) for line in config.splitlines() if " " in line)
    assert seen["stricthostkeychecking"] == "true"
    assert seen["userknownhostsfile"] == peer.known_hosts_path(name)
    assert seen["globalknownhostsfile"] == "/dev/null"
    assert seen["hostkeyalias"] == peer.HOST_KEY_ALIAS
    assert seen["updatehostkeys"] == "false"
