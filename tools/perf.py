"""Static performance model: the least time a kernel launch can take on a GPU, from what it does
(FLOPs, bytes, CTAs) and how it does it (its main loop's instruction mix, tools/sass.py).

A launch is bound by whichever of four resources it exhausts first, each spread over every SM:

    tensor   FLOPs / (dense tensor peak x the mma.sync ceiling of that GPU)
    issue    instructions issued / (SMs x 4 schedulers x clock): a main loop issuing
             `issue_per_mma` instructions per m16n8k16 runs its FLOPs / 4096 HMMAs at that cost
    shared   shared-memory bytes / (SMs x 128 B x clock), likewise per HMMA
    dram     bytes the kernel moves / DRAM bandwidth

and it runs in whole waves: a launch of C CTAs with k resident per SM takes ceil(C / (k SMs))
waves, each as long as a full one, so the bound is divided by the wave efficiency
C / (waves x k x SMs). The roofline time is max(FLOPs / peak, ideal bytes / bandwidth); the
fraction of roofline is roofline time over predicted time. A100: an HMMA takes an SM 2 clocks at
peak, so a loop stays under the tensor bound with at most 8 issue slots and 256 shared bytes per
HMMA; H100 (1 clock): 4 slots and 128 bytes.

Memory-bound kernels hide DRAM latency only with enough bytes in flight: Little's law asks for
bandwidth x latency / SMs per SM (DRAM_LATENCY_S below, a loaded-latency figure of ~600-800 ns
on both parts from the Ampere and Hopper microbenchmark papers, Jia et al. 2021 and Luo et al.
2024). A launch that says how many bytes each CTA keeps in flight gets at most
(resident CTAs x bytes in flight) / latency of bandwidth, and is "latency"-bound when that is
less than the DRAM's: a grid of 32 CTAs cannot stream at the bandwidth of 108 SMs. Its DRAM time
is then not divided by the wave efficiency again (the resident CTAs already count the idle SMs).
A launch whose threads wait through a chain of dependent global round trips (a loop over rows
whose next load waits for the last one's result: a read-modify-write, a serial reduction) takes
at least that many DRAM latencies: the "serial" bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from benchmarks.gpus import GPU, HMMA_FLOP, ISSUE_SLOTS_PER_CLOCK, SHARED_BYTES_PER_CLOCK

DRAM_LATENCY_S = 700e-9


def waves(ctas: int, sms: int, ctas_per_sm: int) -> int:
    return math.ceil(ctas / (sms * ctas_per_sm)) if ctas else 0


def wave_efficiency(ctas: int, sms: int, ctas_per_sm: int) -> float:
    """Share of the SM slots of the launch's waves that hold a CTA (1.0: the last wave is full)."""
    if ctas <= 0 or ctas_per_sm <= 0:
        return 0.0
    return ctas / (waves(ctas, sms, ctas_per_sm) * sms * ctas_per_sm)


def bytes_in_flight_needed(gpu: GPU) -> float:
    """Bytes each SM must have in flight to keep DRAM busy (Little's law)."""
    return gpu.dram_bandwidth * DRAM_LATENCY_S / gpu.sms


@dataclass
class Launch:
    """What one kernel launch does, at one shape."""
    flops: float = 0.0  # tensor-core FLOPs (0 for memory-bound kernels)
    bytes_moved: float = 0.0  # DRAM bytes the kernel really loads and stores
    ideal_bytes: float = 0.0  # each input read once, each output written once
    ctas: int = 1
    ctas_per_sm: int = 1
    issue_per_mma: float | None = None  # from the main loop's SASS
    shared_bytes_per_mma: float | None = None
    in_flight_per_cta: float | None = None  # bytes of global loads one CTA keeps outstanding
    serial_round_trips: float = 0.0  # the longest chain of dependent global round trips of a thread


@dataclass
class Prediction:
    seconds: float
    limiter: str  # "tensor", "issue", "shared", "dram", "latency", "serial" or "none"
    bounds: dict  # resource -> seconds, before the wave efficiency
    wave_efficiency: float
    roofline_seconds: float

    @property
    def fraction_of_roofline(self) -> float:
        return self.roofline_seconds / self.seconds if self.seconds else 0.0


def predict(launch: Launch, gpu: GPU) -> Prediction:
    clock, sms = gpu.clock_hz, gpu.sms
    mmas = launch.flops / HMMA_FLOP
    bounds = {
        "tensor": launch.flops / (gpu.tensor_flops * gpu.mma_sync_ceiling),
        "issue": mmas * (launch.issue_per_mma or 0.0) / (sms * ISSUE_SLOTS_PER_CLOCK * clock),
        "shared": mmas * (launch.shared_bytes_per_mma or 0.0) / (sms * SHARED_BYTES_PER_CLOCK * clock),
        "dram": launch.bytes_moved / gpu.dram_bandwidth,
    }
    efficiency = wave_efficiency(launch.ctas, sms, launch.ctas_per_sm)
    scaled = {k: v / efficiency if efficiency else math.inf for k, v in bounds.items()}
    if launch.in_flight_per_cta and launch.bytes_moved:
        resident = min(launch.ctas, sms * launch.ctas_per_sm)
        bandwidth = min(gpu.dram_bandwidth, resident * launch.in_flight_per_cta / DRAM_LATENCY_S)
        scaled["dram"] = launch.bytes_moved / bandwidth
        if bandwidth < gpu.dram_bandwidth:
            bounds["latency"], scaled["latency"] = scaled["dram"], scaled.pop("dram")
    bounds["serial"] = scaled["serial"] = launch.serial_round_trips * DRAM_LATENCY_S
    limiter = max(scaled, key=scaled.get)
    seconds = scaled[limiter]
    roofline = max(launch.flops / gpu.tensor_flops, launch.ideal_bytes / gpu.dram_bandwidth)
    return Prediction(seconds, limiter if bounds[limiter] else "none", bounds, efficiency, roofline)
