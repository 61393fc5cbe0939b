"""The lab's disk sizes (lab/guest.disk_size_mib): GiB by default, MiB with M, whole extents."""
import os
import subprocess

import pytest

from lab.common import LabError
from lab.guest import disk_size_mib, disk_template


@pytest.mark.parametrize("size, mib", [(1, 1024), ("2", 2048), ("2G", 2048), ("256M", 256),
                                       ("256m", 256), (" 64M ", 64)])
def test_it_reads_a_disk_size_in_gib_or_mib(size, mib):
    assert disk_size_mib(size) == mib


@pytest.mark.parametrize("size", ["", "1.5", "-1", "1T", "32M", "66M", "1G; rm -rf /", None])
def test_it_refuses_a_size_it_cannot_make_with_the_reason(size):
    with pytest.raises(LabError, match="disk"):
        disk_size_mib(size)


def seeded_build_dir(tmp_path):
    """A build folder as lab.guest.build leaves it, as far as disk templates read it."""
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "seed").write_bytes(b"seed")
    return str(tmp_path)


@pytest.mark.parametrize("fill", [-1, 65, 10**6])
def test_it_refuses_a_fill_the_disk_cannot_hold_and_writes_nothing(tmp_path, fill):
    build = seeded_build_dir(tmp_path)
    with pytest.raises(LabError, match="--fill"):
        disk_template(build, "128M", "raw", fill)
    assert sorted(os.listdir(build)) == ["seed"]


def test_it_fills_a_template_with_that_much_random_data_beside_the_seed(tmp_path):
    # bench user_paths moves a server whose 2 GiB disk holds 1 GiB (mkserver --fill 1024).
    build = seeded_build_dir(tmp_path)
    path = disk_template(build, "128M", "raw", 16)
    assert path.endswith("disk-128M-fill16M.raw") and disk_template(build, "128M", "raw") != path
    listing = subprocess.run(["debugfs", "-R", "ls -l /", path], capture_output=True,
                             text=True, check=True).stdout
    sizes = {fields[-1]: int(fields[-4]) for fields in map(str.split, listing.splitlines())
             if len(fields) >= 6 and fields[-1] in ("fill", "seed")}
    assert sizes == {"fill": 16 << 20, "seed": 4}
    with open(path, "rb") as disk:  # random data, no zeros: it all has to be copied
        data = disk.read()
    zero = bytes(4096)
    full = sum(data[at:at + 4096] != zero for at in range(0, len(data), 4096))
    assert full * 4096 >= 16 << 20
