"""The lab's disk sizes (lab/guest.disk_size_mib): GiB by default, MiB with M, whole extents."""
import pytest

from lab.common import LabError
from lab.guest import disk_size_mib


@pytest.mark.parametrize("size, mib", [(1, 1024), ("2", 2048), ("2G", 2048), ("256M", 256),
                                       ("256m", 256), (" 64M ", 64)])
def test_it_reads_a_disk_size_in_gib_or_mib(size, mib):
    assert disk_size_mib(size) == mib


@pytest.mark.parametrize("size", ["", "1.5", "-1", "1T", "32M", "66M", "1G; rm -rf /", None])
def test_it_refuses_a_size_it_cannot_make_with_the_reason(size):
    with pytest.raises(LabError, match="disk"):
        disk_size_mib(size)
