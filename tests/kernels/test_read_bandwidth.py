"""The read-bandwidth probe the benchmarks divide by: it runs on any buffer size and thread
count, with and without software prefetch, and refuses nonsense."""

import numpy as np
import pytest

from edgepet import _native
from edgepet.kernels import read_bandwidth


@pytest.mark.parametrize("prefetch_bytes", [0, 2048, 8192, 1 << 30])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_read_seconds_reads_any_buffer(threads, prefetch_bytes):
    # odd sizes: chunks and the prefetch distance end inside lines and past the buffer
    for nbytes in (0, 8, 72, 1000, (1 << 20) + 24):
        seconds = _native.read_seconds(np.ones(nbytes, np.uint8), threads, prefetch_bytes)
        assert 0.0 <= seconds < 5.0


def test_read_seconds_refuses_bad_arguments():
    buffer = np.ones(64, np.uint8)
    with pytest.raises(ValueError, match="threads"):
        _native.read_seconds(buffer, 0)
    with pytest.raises(ValueError, match="prefetch_bytes"):
        _native.read_seconds(buffer, 1, -64)


def test_read_bandwidth_is_a_rate_in_gb_per_s():
    one = read_bandwidth(1, nbytes=64 << 20, repeats=2)
    # a buffer of 64 MB read in under a microsecond or over a minute is no bandwidth
    assert 0.05 < one < 64e3
    with pytest.raises(ValueError, match="threads"):
        read_bandwidth(0)
