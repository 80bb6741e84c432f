"""The benchmark's clock readings: busybox ``adjtimex`` printouts as containers print them."""

import pytest

from lab.bench.probes import adjtimex_seconds

PRINTOUT = """    mode:         0
-o  offset:       0 us
-f  freq.adjust:  0 (65536 = 1ppm)
    maxerror:     16000000
    esterror:     16000000
    status:       {status} (UNSYNC)
-p  timeconstant: 2
    precision:    1 us
    tolerance:    32768000
-t  tick:         10000 us
    time.tv_sec:  1796116429
    time.tv_usec: {fraction}
    return value: 5 (clock not synchronized)
"""


@pytest.mark.parametrize(("status", "fraction"), [(64, 134062), (8256, 134062176)])
def test_a_printout_reads_in_microsecond_and_in_nanosecond_mode(status: int,
                                                                 fraction: int) -> None:
    """8256 is STA_UNSYNC with STA_NANO: tv_usec then holds nanoseconds (seen on a host
    whose time daemon set it; read as microseconds, a 1-second transfer took minutes)."""
    start = PRINTOUT.format(status=status, fraction=fraction)
    end = start.replace("1796116429", "1796116430")
    assert adjtimex_seconds(start + "transfer output\n" + end) == pytest.approx(
        [1796116429.134062, 1796116430.134062], abs=1e-6)
