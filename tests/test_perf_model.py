"""The static performance model's arithmetic (tools/perf.py) and the GPU table it reads, against
hand-computed cases."""
import math

import pytest

from benchmarks.gpus import GPUS, lookup
from tools import perf

A100, H100 = GPUS["A100-SXM-80GB"], GPUS["H100-SXM"]


def test_clocks_and_hmma_rates_follow_from_the_datasheets():
    assert A100.clock_hz == pytest.approx(1.41e9, rel=1e-3)  # 312e12 / (108 x 2048)
    assert H100.clock_hz == pytest.approx(1.83e9, rel=1e-3)  # 989e12 / (132 x 4096)
    assert (A100.hmma_clocks, H100.hmma_clocks) == (2.0, 1.0)
    assert GPUS["H100-PCIe"].sms == 114 and lookup("NVIDIA H200").sms == 132


@pytest.mark.parametrize("ctas, sms, per_sm, expected", [
    (108, 108, 1, 1.0),  # one full wave
    (109, 108, 1, 109 / 216),  # one CTA spills into a second wave
    (144, 132, 1, 144 / 264),  # GPT-2's 12 x 12 attention heads, one tile each, on an H100
    (144, 108, 2, 144 / 216),
    (0, 108, 1, 0.0),
])
def test_wave_efficiency(ctas, sms, per_sm, expected):
    assert perf.wave_efficiency(ctas, sms, per_sm) == pytest.approx(expected)


def test_bytes_in_flight():
    # Little's law: 2.039 TB/s x 700 ns over 108 SMs.
    assert perf.bytes_in_flight_needed(A100) == pytest.approx(2.039e12 * 700e-9 / 108)


def test_tensor_bound_gemm():
    """A 4096^3 bf16 GEMM whose loop is cheap (4 slots, 128 B per HMMA) is tensor-bound: on an
    A100 it takes 2 x 4096^3 / 312e12 s; on an H100 mma.sync caps it at 65% of the peak."""
    launch = perf.Launch(flops=2 * 4096 ** 3, bytes_moved=3 * 4096 ** 2 * 2, ideal_bytes=3 * 4096 ** 2 * 2,
                         ctas=108 * 4, ctas_per_sm=2, issue_per_mma=4, shared_bytes_per_mma=128)
    p = perf.predict(launch, A100)
    assert p.limiter == "tensor" and p.wave_efficiency == 1.0
    assert p.seconds == pytest.approx(2 * 4096 ** 3 / 312e12)
    assert p.fraction_of_roofline == pytest.approx(1.0)
    q = perf.predict(launch, H100)
    assert q.bounds["tensor"] == pytest.approx(2 * 4096 ** 3 / (989e12 * 0.65))


def test_issue_and_shared_bounds():
    """12 issue slots per HMMA on an A100: 1.5x the tensor bound (8 slots per 2-clock HMMA);
    384 shared bytes per HMMA: 1.5x as well (256 B per HMMA)."""
    flops = 2 * 4096 ** 3
    mmas = flops / 4096
    launch = perf.Launch(flops=flops, ctas=108, ctas_per_sm=1, issue_per_mma=12, shared_bytes_per_mma=384)
    p = perf.predict(launch, A100)
    tensor = flops / 312e12
    assert p.bounds["issue"] == pytest.approx(mmas * 12 / (108 * 4 * A100.clock_hz)) == pytest.approx(1.5 * tensor)
    assert p.bounds["shared"] == pytest.approx(1.5 * tensor)
    assert p.limiter in ("issue", "shared") and p.fraction_of_roofline == pytest.approx(1 / 1.5)


def test_memory_bound_with_a_partial_wave():
    """LayerNorm forward of 12 x 1024 rows of 768 bf16 that moves 1.2x the ideal bytes, in 150
    CTAs on 108 SMs (1 per SM): DRAM-bound, two waves of which the second holds 42 CTAs."""
    ideal = 2 * 12 * 1024 * 768 * 2
    launch = perf.Launch(bytes_moved=1.2 * ideal, ideal_bytes=ideal, ctas=150, ctas_per_sm=1)
    p = perf.predict(launch, A100)
    assert p.limiter == "dram"
    assert p.wave_efficiency == pytest.approx(150 / 216)
    assert p.seconds == pytest.approx(1.2 * ideal / 2.039e12 / (150 / 216))
    assert p.fraction_of_roofline == pytest.approx((150 / 216) / 1.2)


def test_a_launch_that_fits_nowhere_never_finishes():
    assert math.isinf(perf.predict(perf.Launch(bytes_moved=1.0, ctas=10, ctas_per_sm=0), A100).seconds)


def test_too_few_bytes_in_flight_is_latency_bound():
    """32 CTAs with 12 KB of loads in flight each (the LayerNorm backward's grid): 384 KB over
    700 ns is 0.55 TB/s, a quarter of an A100's DRAM; with 64 KB each, the DRAM bounds again and
    the time is not divided by the wave efficiency a second time."""
    nbytes = 75e6
    few = perf.predict(perf.Launch(bytes_moved=nbytes, ideal_bytes=nbytes, ctas=32, ctas_per_sm=4,
                                   in_flight_per_cta=12 * 1024), A100)
    assert few.limiter == "latency"
    assert few.seconds == pytest.approx(nbytes / (32 * 12 * 1024 / 700e-9))
    many = perf.predict(perf.Launch(bytes_moved=nbytes, ideal_bytes=nbytes, ctas=3072, ctas_per_sm=4,
                                    in_flight_per_cta=64 * 1024), A100)
    assert many.limiter == "dram" and many.seconds == pytest.approx(nbytes / 2.039e12)


def test_a_chain_of_dependent_round_trips_is_serial_bound():
    """4224 partial rows summed 4 per dependent step: 1056 DRAM latencies, 739 us, however few
    bytes (the LayerNorm backward's reduction on an H100 before issue 14)."""
    p = perf.predict(perf.Launch(bytes_moved=1e6, ideal_bytes=3e3, ctas=3, ctas_per_sm=8, serial_round_trips=1056),
                     H100)
    assert p.limiter == "serial" and p.seconds == pytest.approx(1056 * 700e-9)
