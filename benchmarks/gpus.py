"""The GPUs we target, as numbers: one table that the benchmarks' roofline, MFU and the static
performance model (tools/perf.py) all read.

Vendor figures are dense (no sparsity) bf16/fp16 tensor-core FLOP/s and DRAM bandwidth, from
NVIDIA's datasheets: A100 (A100 Tensor Core GPU datasheet, 2021: 312 TFLOP/s; 40 GB 1555 GB/s,
80 GB SXM 2039 GB/s, 80 GB PCIe 1935 GB/s), H100 (H100 Tensor Core GPU datasheet, 2023: SXM
989 TFLOP/s 3.35 TB/s, PCIe 756 TFLOP/s 2.0 TB/s, NVL 835 TFLOP/s 3.9 TB/s), H200 (H200 datasheet,
2024: SXM 989 TFLOP/s 4.8 TB/s, NVL 835 TFLOP/s 4.8 TB/s), GH200 (GH200 datasheet, 2024: 989
TFLOP/s; 96 GB HBM3 4.0 TB/s, 144 GB HBM3e 4.9 TB/s). SM counts from the architecture
whitepapers (A100: 108; H100 SXM5 132, PCIe 114).

Per-SM rates (A100 and H100 whitepapers, CUDA C Programming Guide): 4 warp schedulers, each
issuing one instruction per clock; shared memory 32 banks x 4 bytes = 128 B per clock; the
tensor cores of one SM do 2048 (A100) or 4096 (H100) dense fp16/bf16 FLOP per clock, so one
mma.sync.m16n8k16 (4096 FLOP) takes an SM 2 clocks on an A100 and 1 on an H100 at peak. The
clock below is the one the datasheet's tensor peak implies (peak / (SMs x FLOP per clock)).

H100's dense peak assumes wgmma (HGMMA); our kernels issue mma.sync (HMMA), which Hopper runs at
a fraction of it. MMA_SYNC_CEILING is that fraction as we assume it until a GPU run measures it:
FlashAttention-3's paper (Shah et al., 2024) measures FlashAttention-2, an mma.sync kernel, at
35-40% of H100's peak in its best case, where the same design reaches ~70% on an A100; the
best mma.sync GEMMs reach about two thirds of the dense peak.
"""
from __future__ import annotations

import re
from typing import NamedTuple

ISSUE_SLOTS_PER_CLOCK = 4  # warp instructions per SM per clock (one per scheduler)
SHARED_BYTES_PER_CLOCK = 128  # per SM
HMMA_FLOP = 2 * 16 * 8 * 16  # one mma.sync.m16n8k16


class GPU(NamedTuple):
    name: str
    arch: str  # the sm_ target our kernels are compiled for
    sms: int
    tensor_flops: float  # dense bf16/fp16 tensor-core FLOP/s
    dram_bandwidth: float  # bytes/s
    tensor_flop_per_clock_per_sm: int
    mma_sync_ceiling: float  # fraction of tensor_flops that mma.sync can reach
    source: str

    @property
    def clock_hz(self) -> float:
        return self.tensor_flops / (self.sms * self.tensor_flop_per_clock_per_sm)

    @property
    def hmma_clocks(self) -> float:
        """Clocks one SM needs per m16n8k16 mma.sync at the tensor peak."""
        return HMMA_FLOP / self.tensor_flop_per_clock_per_sm


_A100 = dict(arch="sm_80", sms=108, tensor_flops=312e12, tensor_flop_per_clock_per_sm=2048, mma_sync_ceiling=1.0)
_H100 = dict(arch="sm_90a", sms=132, tensor_flops=989e12, tensor_flop_per_clock_per_sm=4096, mma_sync_ceiling=0.65)

GPUS = {
    "A100-SXM-80GB": GPU("A100 SXM4 80GB", dram_bandwidth=2.039e12, source="A100 datasheet", **_A100),
    "A100-SXM-40GB": GPU("A100 SXM4 40GB", dram_bandwidth=1.555e12, source="A100 datasheet", **_A100),
    "A100-PCIe-80GB": GPU("A100 PCIe 80GB", dram_bandwidth=1.935e12, source="A100 datasheet", **_A100),
    "A100-PCIe-40GB": GPU("A100 PCIe 40GB", dram_bandwidth=1.555e12, source="A100 datasheet", **_A100),
    "H100-SXM": GPU("H100 SXM5", dram_bandwidth=3.35e12, source="H100 datasheet", **_H100),
    "H100-PCIe": GPU("H100 PCIe", dram_bandwidth=2.0e12, source="H100 datasheet",
                     **{**_H100, "sms": 114, "tensor_flops": 756e12}),
    "H100-NVL": GPU("H100 NVL", dram_bandwidth=3.9e12, source="H100 datasheet", **{**_H100, "tensor_flops": 835e12}),
    "H200-SXM": GPU("H200 SXM", dram_bandwidth=4.8e12, source="H200 datasheet", **_H100),
    "H200-NVL": GPU("H200 NVL", dram_bandwidth=4.8e12, source="H200 datasheet", **{**_H100, "tensor_flops": 835e12}),
    "GH200-96GB": GPU("GH200 96GB HBM3", dram_bandwidth=4.0e12, source="GH200 datasheet", **_H100),
    "GH200-144GB": GPU("GH200 144GB HBM3e", dram_bandwidth=4.9e12, source="GH200 datasheet", **_H100),
}

# torch.cuda.get_device_name() spellings, most specific first: "NVIDIA GH200 480GB" must not be
# read as an H200, nor "NVIDIA A100 80GB PCIe" as an SXM part.
_NAMES = (
    (r"\bGH200\b.*\b(144|624)GB\b", "GH200-144GB"),
    (r"\bGH200\b", "GH200-96GB"),
    (r"\bH200\b.*\bNVL\b", "H200-NVL"),
    (r"\bH200\b", "H200-SXM"),
    (r"\bH100\b.*\bNVL\b", "H100-NVL"),
    (r"\bH100\b.*\bPCIe\b", "H100-PCIe"),
    (r"\bH100\b", "H100-SXM"),
    (r"\bA100\b.*\bPCIE\b.*\b80GB\b|\bA100\b.*\b80GB\b.*\bPCIE\b", "A100-PCIe-80GB"),
    (r"\bA100\b.*\bPCIE\b", "A100-PCIe-40GB"),
    (r"\bA100\b.*\b40GB\b", "A100-SXM-40GB"),
    (r"\bA100\b", "A100-SXM-80GB"),
)


def lookup(device_name: str | None) -> GPU | None:
    """The table's entry for a torch device name, or None for a GPU not listed."""
    if not device_name:
        return None
    for pattern, key in _NAMES:
        if re.search(pattern, device_name, re.IGNORECASE):
            return GPUS[key]
    return None
