"""What Ferry feeds to a node command's stdin is sent in pieces, not a character at a time.

invoke's runner reads a stream that is not a terminal one character per loop and sleeps
10 ms between loops; Ferry's runner reads STDIN_PIECE characters. The lab proves the whole
path with a 128 KiB NVRAM file (tests/lab/test_migration_lab.py, UEFI offline).
"""
import io

from fabric.runners import Remote

from app.infra import ssh


def test_the_runner_reads_a_payload_in_pieces_of_64_kib():
    runner = ssh._feeding_runner()
    assert issubclass(runner, Remote)
    payload = io.StringIO("n" * (ssh.STDIN_PIECE * 2 + 5))
    read = runner.read_our_stdin(object.__new__(runner), payload)
    assert len(read) == ssh.STDIN_PIECE
    assert [len(runner.read_our_stdin(object.__new__(runner), payload)) for _ in range(3)] \
        == [ssh.STDIN_PIECE, 5, 0]  # "" at the end: invoke then closes the command's stdin

