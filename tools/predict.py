"""Predicted time of our kernels and of eager PyTorch, per op and per GPT-2 training step, on the
GPUs of benchmarks/gpus.py: the static performance model (tools/perf.py) applied to every kernel
launch a training step makes.

Where the launches come from. Each op runs forward and backward on CPU tensors at the shapes of
the model (GPT-2 124M: 12 sequences of 1024 tokens, C 768, 12 heads of 64; 350M: 16 sequences,
C 1024, 16 heads) with backend "cuda", through the CPU harness in a dry run: every launch is
recorded (kernel, grid, block, dynamic shared memory) and none runs, so the grids are the ones
the host code computes for those shapes, in a fraction of a second. Each launch is joined with
its kernel's row of the resource report (tools/kernels.py, compiled for sm_80 and sm_90a): its
registers and static shared memory give the CTAs per SM (the occupancy calculator's arithmetic,
dynamic shared memory included), its main loop the issue slots and shared bytes per HMMA.

What a launch does (FLOPs, bytes) is launch arithmetic, from the tensors of the C++ op call:
    layer_norm_fwd     every tensor read or written once (a row stays in registers)
    layer_norm_bwd     every tensor once, plus per group of 16 rows two fp32 rows of partial
                       dweight/dbias, written by the row kernel and read by the reduce kernel
    gemm               2 M N K FLOPs; a, b, the outputs and the epilogue's operands once (tiles
                       re-read by other CTAs come from L2: A and B of nanoGPT's GEMMs fit in it);
                       split over K: per chunk an fp32 M x N of partials written, read from L2
    column_sum         x once; per row slice (grid.y of the partial kernel) an fp32 row of partials
    attention fwd      2 products of the causal half, 4 B H T(T+1)/2 D FLOPs; q, k, v, o, lse once
                       (k and v re-read from L2 by later row blocks: one head's are 256 KB)
    attention bwd      delta kernel: o, do read, delta written; dK/dV kernel: 4 products (S, dP,
                       dV, dK), dQ kernel: 3 (S, dP, dQ); each reads q, k, v, do, lse, delta
    normal_init        every tensor written once
and its ideal is each input of the op read once and each output written once.

Each launch is predicted with perf.predict (the slowest of tensor, issue, shared-memory and DRAM
time, over the wave efficiency), and takes at least MIN_LAUNCH_S. Eager PyTorch is predicted from
published and stated figures, in EAGER below: cuBLAS GEMMs at a fraction of the dense peak,
elementwise ops, PyTorch's LayerNorm kernels and reductions as DRAM passes at a fraction of the
bandwidth, SDPA as FlashAttention-2 at its published fraction of peak. A training step is, per
layer, our three ops (two add+LayerNorms, attention, GELU-MLP) against their eager equivalents,
plus what both paths leave to PyTorch (the QKV and output projections, lm_head, cross-entropy,
the embedding and AdamW), predicted the same way on both sides.

These are predictions until a GPU run measures them (`python -m tools bench` records measured
beside predicted); the constants below say where each figure comes from.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.gpus import GPU, GPUS
from tools import budgets, perf

# A kernel launch takes at least this long on the GPU, launch latency and the tail of its last
# CTA included (~2-4 us measured for empty kernels on A100 and H100; CUDA graphs hide the CPU
# side, not this).
MIN_LAUNCH_S = 2e-6
DTYPE = torch.bfloat16
T = 1024
VOCAB = 50304


@dataclass(frozen=True)
class Shapes:
    """What one layer's ops run on: `batch` sequences of `seq` tokens of `hidden` features,
    `heads` attention heads, an MLP of `mlp_hidden` (4 x hidden in GPT-2), LayerNorm with the
    residual add before it (add_layer_norm) or without, and the tensors normal_init_ fills."""
    batch: int
    seq: int
    hidden: int
    heads: int = 1
    mlp_hidden: int = 0
    residual: bool = True
    init: tuple = ()

    @property
    def rows(self) -> int:
        return self.batch * self.seq

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class Model:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    batch: int

    @property
    def tokens(self) -> int:
        return self.batch * T

    @property
    def shapes(self) -> Shapes:
        return Shapes(self.batch, T, self.n_embd, self.n_head, 4 * self.n_embd, True, tuple(init_shapes(self)))


MODELS = {
    "gpt2": Model("GPT-2 124M", 12, 768, 12, batch=12),
    "gpt2-medium": Model("GPT-2 350M", 24, 1024, 16, batch=16),
}
# The GPUs the report shows unless told otherwise: the two our users train on, and the H200 the
# first GPU run will measure.
DEFAULT_GPUS = ("A100-SXM-80GB", "H100-SXM", "H200-SXM")
# The budgets hold the figures of these two: 108 and 132 SMs, sm_80 and sm_90a (an H200 has an
# H100's SMs and a faster DRAM).
BUDGET_GPUS = ("A100-SXM-80GB", "H100-SXM")
BACKENDS = ("cuda", "triton")

# Eager PyTorch, as fractions of the GPU's peaks (assumptions until measured; the first GPU run
# calibrates them):
#   gemm          cuBLAS on nanoGPT's bf16 GEMMs (M = 12-16K, N and K 768-4096): ~75% of the
#                 dense peak on an A100, ~60% on an H100 (cuBLAS's own GEMM benchmarks at these
#                 sizes; H100 GEMMs this small do not fill 132 SMs' wgmma pipelines)
#   attention     SDPA's FlashAttention-2, causal, head dim 64, 1K tokens: forward ~45% / backward
#                 ~30% of peak on an A100 (FlashAttention-2 paper, Dao 2023, Fig. 4-6), ~20% /
#                 ~15% on an H100 (FlashAttention-3 paper, Shah et al. 2024, FA2's bars at 1K)
#   memory        PyTorch's vectorised elementwise, LayerNorm and reduction kernels: ~80% of the
#                 DRAM bandwidth (the streaming copy nvbandwidth reaches ~90%)
EAGER = {
    "sm_80": {"gemm": 0.75, "attention_fwd": 0.45, "attention_bwd": 0.30, "memory": 0.80},
    "sm_90a": {"gemm": 0.60, "attention_fwd": 0.20, "attention_bwd": 0.15, "memory": 0.80},
}
OPS = ("layernorm", "attention", "mlp", "init")
PHASES = ("forward", "backward")
# The C++ ops the Python ops call (nanogpt_kernels/ops/*.py): the unit the launch arithmetic reads.
CUDA_OPS = ("cuda_layer_norm_fwd", "cuda_layer_norm_bwd", "cuda_attention_fwd", "cuda_attention_bwd", "cuda_gemm",
            "cuda_column_sum", "cuda_normal_init_")


# -- the launches of a training step, recorded -----------------------------------------------

@dataclass
class Call:
    """One call of a C++ op, and the kernel launches it made."""
    op: str
    phase: str
    name: str
    tensors: dict  # argument or output name -> (shape, itemsize)
    launches: list


_ARG_NAMES = {
    "cuda_layer_norm_fwd": ("x", "residual", "weight", "bias"),
    "cuda_layer_norm_bwd": ("dy", "xs", "weight", "mean", "rstd", "ds", "dx2_dtype"),
    "cuda_attention_fwd": ("q", "k", "v", "o", "lse"),
    "cuda_attention_bwd": ("do", "q", "k", "v", "o", "lse", "dq", "dk", "dv"),
    "cuda_gemm": ("a", "b", "d", "d2", "bias", "aux", "epilogue", "gelu", "column_sums"),
    "cuda_column_sum": ("x", "out"),
}
_OUT_NAMES = {"cuda_layer_norm_fwd": ("y", "s", "mean", "rstd"), "cuda_layer_norm_bwd": ("dx", "dx2", "dweight", "dbias")}


def _tensors(name: str, args, out) -> dict:
    if name == "cuda_normal_init_":
        return {f"t{i}": (tuple(t.shape), t.element_size()) for i, t in enumerate(args[0])}
    named = dict(zip(_ARG_NAMES[name], args))
    if name in _OUT_NAMES:
        named.update(zip(_OUT_NAMES[name], out))
    return {k: (tuple(t.shape), t.element_size()) for k, t in named.items()
            if isinstance(t, torch.Tensor) and t.numel()}


@contextlib.contextmanager
def recording(phase_of, sm_count: int = 0, resident: dict | None = None):
    """Within the block, every C++ op call is recorded as a Call (its launches dry-run in the
    harness, nothing computed, grids sized for `sm_count` SMs, and for `resident` blocks per SM
    of a kernel (by report name), where the launcher asks); `phase_of()` names the (op, phase)
    the call belongs to."""
    from nanogpt_kernels import _backend
    ext = _backend.load_extension()
    calls = []
    namespace = torch.ops.nanogpt_kernels
    originals = {name: getattr(namespace, name) for name in CUDA_OPS}

    def recorder(name, original):
        def call(*args):
            ext.harness_instruments(dry_run=True, sm_count=sm_count, resident=resident or {})
            out = original(*args)
            launches = json.loads(ext.harness_records())["launches"]
            op, phase = phase_of()
            calls.append(Call(op, phase, name, _tensors(name, args, out), launches))
            return out
        return call

    try:
        for name, original in originals.items():
            setattr(namespace, name, recorder(name, original))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(namespace, name, original)
        ext.harness_instruments()


def _exercise(shapes: Shapes, ops, phase) -> None:
    """Runs one layer's ops, forward and backward, with backend "cuda" on CPU tensors of `shapes`
    (their contents do not matter: the harness either records the launches without running them
    or runs a sample of their blocks); "init" fills shapes.init. `phase(op, "forward" |
    "backward")` is called before each part."""
    import nanogpt_kernels as nk

    M, C, H = shapes.rows, shapes.hidden, shapes.heads

    def leaf(*shape):
        return torch.zeros(*shape, dtype=DTYPE).requires_grad_()

    def run(op, forward):
        phase(op, "forward")
        outs = forward()
        outs = outs if isinstance(outs, tuple) else (outs,)
        phase(op, "backward")
        torch.autograd.backward(outs, [torch.zeros_like(o) for o in outs])

    if "layernorm" in ops:
        x, r, w, b = leaf(M, C), leaf(M, C), leaf(C), leaf(C)
        if shapes.residual:
            run("layernorm", lambda: nk.add_layer_norm(x, r, w, b, backend="cuda"))
        else:
            run("layernorm", lambda: nk.layer_norm(x, w, b, backend="cuda"))
    if "attention" in ops:
        q, k, v = (leaf(shapes.batch, H, shapes.seq, shapes.head_dim) for _ in range(3))
        run("attention", lambda: nk.causal_attention(q, k, v, backend="cuda"))
    if "mlp" in ops:
        F = shapes.mlp_hidden
        x, w1, b1, w2, b2 = leaf(M, C), leaf(F, C), leaf(F), leaf(C, F), leaf(C)
        run("mlp", lambda: nk.gelu_mlp(x, w1, b1, w2, b2, backend="cuda"))
    if "init" in ops and shapes.init:
        phase("init", "forward")
        params = [torch.empty(s, dtype=torch.float32) for s in shapes.init]
        nk.normal_init_(params, [0.02] * len(params), seed=0, backend="cuda")


def record_step(shapes: Shapes, ops=OPS, sm_count: int = 0, rows: dict | None = None,
                arch: str = "") -> list[Call]:
    """The C++ op calls, with their launches, of one layer's ops at `shapes`, on a GPU of
    `sm_count` SMs (0: the CPU's default, for launchers that size their grid by it). With the
    kernel report's `rows`, persistent launchers size their grid by the blocks of `arch` one SM
    holds, as cudaOccupancyMaxActiveBlocksPerMultiprocessor tells them on the GPU: a first dry
    run finds each launch's block (which does not depend on it), a second uses it."""
    current = ["", ""]

    def phase(op, name):
        current[:] = [op, name]

    with recording(lambda: tuple(current), sm_count) as calls:
        _exercise(shapes, ops, phase)
    if rows is None:
        return calls
    with recording(lambda: tuple(current), sm_count, resident_blocks(calls, rows, arch)) as calls:
        _exercise(shapes, ops, phase)
    return calls


def resident_blocks(calls: list[Call], rows: dict, arch: str) -> dict:
    """{kernel (report name): blocks per SM} of the recorded CUDA launches on `arch`: the
    occupancy of the launch's block with the report's registers and shared memory (the least
    over a kernel's launches: the harness's table has one figure per kernel)."""
    from tools.kernels import occupancy

    out = {}
    for call in calls:
        for launch in call.launches:
            name = report_name(launch["kernel"])
            row = rows.get((arch, name))
            if row is None:
                continue
            smem = launch["dynamic_smem"] + (row.shared_bytes or 0)
            blocks = max(1, occupancy(row.registers, smem, math.prod(launch["block"]), arch)["blocks_per_sm"])
            out[name] = min(blocks, out.get(name, blocks))
    return out


# Blocks of each launch the bank counter runs: every CTA of our kernels issues the same shared-
# memory requests (only the number of tiles it loops over differs), so a few stand for all.
BANK_SAMPLE_BLOCKS = 2


def record_banks(shapes: Shapes, ops=OPS, sm_counts=(0,)) -> dict:
    """{kernel (report name): {instruction: conflict degree, wavefronts over the ideal}} of the
    ldmatrix and cp.async requests of the first blocks of every launch at `shapes`, on each of
    `sm_counts` SMs (launchers size their tiles by it, so each may launch other kernels)."""
    from nanogpt_kernels import _backend
    ext = _backend.load_extension()
    shared = []
    try:
        for sm_count in sorted(set(sm_counts)):
            ext.harness_instruments(banks=True, sample_blocks=BANK_SAMPLE_BLOCKS, sm_count=sm_count)
            _exercise(shapes, [op for op in ops if op != "init"], lambda op, phase: None)
            shared += json.loads(ext.harness_records())["shared"]
    finally:
        ext.harness_instruments()
    out = {}
    for r in shared:
        degrees = out.setdefault(report_name(r["kernel"]), {})
        degrees[r["instruction"]] = max(degrees.get(r["instruction"], 0.0), r["wavefronts"] / r["ideal"])
    return out


def init_shapes(model: Model) -> list[tuple]:
    """The weight matrices nanoGPT initialises from a normal distribution (embeddings, and per
    layer the attention's and MLP's Linear weights); lm_head is tied to wte."""
    C = model.n_embd
    per_layer = ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C))
    return [(VOCAB, C), (T, C)] + [s for _ in range(model.n_layer) for s in per_layer]


# -- launch arithmetic -------------------------------------------------------------------------

def _size(call: Call, *names) -> int:
    return sum(math.prod(call.tensors[n][0]) * call.tensors[n][1] for n in names if n in call.tensors)


def _all(call: Call) -> int:
    return _size(call, *call.tensors)


def _causal_pairs(call: Call) -> tuple[int, int]:
    B, H, t, D = call.tensors["q"][0]
    return B * H * t * (t + 1) // 2, D


@dataclass
class Work:
    """What one launch does: tensor-core FLOPs; the bytes it moves to and from DRAM; the bytes its
    own loads and stores request (DRAM plus what L1 and L2 serve: re-reads, read-modify-writes),
    which the budgets hold against the ideal; and the longest chain of dependent global round
    trips one thread waits through in sequence."""
    flops: float = 0.0
    dram_bytes: float = 0.0
    global_bytes: float = 0.0
    serial_round_trips: float = 0.0


# The loops that sum a column over many rows of partials (layer_norm_bwd_reduce_kernel,
# column_sum_final_kernel) issue this many rows' loads per iteration: nvcc unrolls them 4x
# (tests/test_predict.py checks it in their SASS); each iteration waits for its loads.
REDUCE_UNROLL = 4
# csrc/layernorm.cu's kGroupRows: the backward's partial rows are groups of this many rows.
LN_GROUP_ROWS = 16
# csrc/layernorm.cu's kReduceLanes and kReduceBatch: the reduce kernel's row lanes, and the
# rows (chunk sums) each lane loads before it adds them.
LN_REDUCE_LANES = 8
LN_REDUCE_BATCH = 4


def _ln_reduce_round_trips(chunk_rows: int, chunks: int) -> int:
    """The chain of csrc/layernorm.cu's reduce kernel: a lane's rows of its chunk, a batch per
    round trip; the tile counter's atomic; then (the tile's last block) its share of the chunks'
    sums, likewise."""
    def batches(n):
        return math.ceil(math.ceil(n / LN_REDUCE_LANES) / LN_REDUCE_BATCH)
    return batches(chunk_rows) + 1 + batches(chunks)


def _rows_per_team(call: Call, launch: dict) -> int:
    """Rows each team (a blockDim.x-wide row of a block) of a LayerNorm kernel takes in turn."""
    rows = call.tensors["mean"][0][0]
    return math.ceil(rows / (launch["grid"][0] * launch["block"][1]))


def _reduce_steps(call: Call, rows: int) -> int:
    """Dependent steps of a kernel that sums `rows` rows of partials per column: the CUDA
    reduce loops take REDUCE_UNROLL rows a step, the Triton ones a BLOCK_G-row tile."""
    if call.launches[0].get("source") != "triton":
        return math.ceil(rows / REDUCE_UNROLL)
    from nanogpt_kernels.triton import layernorm, mlp
    block = layernorm._REDUCE_BLOCK_G if call.name == "cuda_layer_norm_bwd" else mlp._COLSUM_BLOCK_M
    return math.ceil(rows / block)


def _split_k_chunks(launch: dict, M: int, N: int) -> int:
    """K-chunks of a csrc/mlp.cu tensor-core GEMM launch: its blocks over its BM x BN tiles (1 for
    the fp32 and Triton kernels, which do not split)."""
    m = re.search(r"TileConfig<(\d+), (\d+),", launch["kernel"])
    if not m:
        return 1
    tiles = math.ceil(M / int(m[1])) * math.ceil(N / int(m[2]))
    return math.prod(launch["grid"]) // tiles


# csrc/mlp.cu's kGroupRows: the rows of D each float32 row of a GEMM's fused column sums covers.
MLP_GROUP_ROWS = 64


def _column_sum_works(call: Call, launches: list, x_bytes: int, N: int) -> list[Work]:
    """A column sum's launches (cuda_column_sum's, or those after a GEMM with fused column sums)
    over x_bytes of rows: the partial kernel sums a slice of rows per column (independent
    loads; CUDA: grid.y slices, Triton: a 1-D grid of slices x the final kernel's column
    blocks); the final kernel sums the slices' fp32 partials like the LayerNorm reduce."""
    out = N * call.tensors["column_sums" if call.name == "cuda_gemm" else "out"][1]
    triton = bool(launches) and launches[0].get("source") == "triton"
    if len(launches) > 1:
        slices = launches[0]["grid"][0] // launches[1]["grid"][0] if triton else launches[0]["grid"][1]
    else:
        slices = 0
    partials = slices * N * 4
    return [Work(dram_bytes=x_bytes + partials, global_bytes=x_bytes + partials),
            Work(dram_bytes=partials + out, global_bytes=partials + out,
                 serial_round_trips=_reduce_steps(call, slices))][:len(launches)]


def work(call: Call) -> list[Work]:
    """The Work of each launch of the call (the module docstring's launch arithmetic), for the
    CUDA kernels and for the Triton ones (tools/triton_launches.py names their calls alike)."""
    n = len(call.launches)
    triton = bool(call.launches) and call.launches[0].get("source") == "triton"
    if call.name == "cuda_layer_norm_fwd" and triton and "_wide" not in call.launches[0]["kernel"]:
        # nanogpt_kernels/triton/layernorm.py's register path: a persistent grid whose programs
        # (grid.x) load weight and bias once, into registers, then take steps of ROWS rows: x
        # (and the residual) read once, s and y written; one round trip per step.
        from nanogpt_kernels.triton import layernorm
        rows, C = call.tensors["mean"][0][0], call.tensors["weight"][0][0]
        programs = call.launches[0]["grid"][0]
        step = layernorm._tiling(C, call.tensors["x"][1], layernorm._FWD_MAX_CHUNKS).rows
        params = _size(call, "weight", "bias")
        return [Work(dram_bytes=_all(call), global_bytes=_all(call) - params + programs * params,
                     serial_round_trips=math.ceil(math.ceil(rows / step) / programs))]
    if call.name == "cuda_layer_norm_fwd" and triton:
        # The streamed rows: per row x (and the residual) in each of three passes (the second
        # and third from L1 and L2), weight and bias per row, s and y written.
        rows, C = call.tensors["mean"][0][0], call.tensors["weight"][0][0]
        x_bytes = C * (call.tensors["x"][1] + (call.tensors["residual"][1] if "residual" in call.tensors else 0))
        per_row = 3 * x_bytes + _size(call, "weight", "bias") + _size(call, "s", "y") // rows + 8
        return [Work(dram_bytes=_all(call), global_bytes=rows * per_row,
                     serial_round_trips=3 * _rows_per_team(call, call.launches[0]))]
    if call.name == "cuda_layer_norm_fwd" and "wide" not in call.launches[0]["kernel"]:
        # csrc/layernorm.cu's register path: x (and the residual) read once, s and y written
        # from registers, weight and bias once per block; one round trip per row.
        rows, C = call.tensors["mean"][0][0], call.tensors["weight"][0][0]
        params = _size(call, "weight", "bias")
        return [Work(dram_bytes=_all(call), global_bytes=_all(call) - params + call.launches[0]["grid"][0] * params,
                     serial_round_trips=_rows_per_team(call, call.launches[0]))]
    if call.name == "cuda_layer_norm_fwd":
        # The wide kernel, per row: x (and the residual, and s written) in a first pass, the
        # normalised input read twice more (variance and output passes: L1 and L2 hits), weight
        # and bias, y written: three dependent round trips.
        rows, C = call.tensors["mean"][0][0], call.tensors["weight"][0][0]
        row = C * call.tensors["x"][1]
        per_row = row * (1 + 2 + 2 + 1 + (2 if "residual" in call.tensors else 0)) + 8
        return [Work(dram_bytes=_all(call), global_bytes=rows * per_row,
                     serial_round_trips=3 * _rows_per_team(call, call.launches[0]))]
    if call.name == "cuda_layer_norm_bwd" and not triton and "wide" not in call.launches[0]["kernel"]:
        # csrc/layernorm.cu's register path: each team reads dy and xs (and ds) once per row and
        # writes dx, keeps its weight in registers, and writes one fp32 row per gradient for each
        # group of LN_GROUP_ROWS rows; the reduce kernel reads those rows once (column tiles x
        # chunks of them), writes each chunk's sums, and a tile's last block adds them up.
        rows, C = call.tensors["mean"][0][0], call.tensors["weight"][0][0]
        es = call.tensors["dy"][1]
        main_launch, reduce_launch = call.launches[0], call.launches[-1]
        teams = main_launch["grid"][0] * main_launch["block"][1]
        groups = math.ceil(rows / LN_GROUP_ROWS)
        chunks = reduce_launch["grid"][1]
        partials, chunk_sums = groups * 2 * C * 4, chunks * 2 * C * 4
        weights = main_launch["grid"][0] * C * es
        streamed = _size(call, "dy", "xs", "mean", "rstd", "ds", "dx", "dx2")
        main = Work(dram_bytes=streamed + _size(call, "weight") + partials,
                    global_bytes=streamed + weights + partials,
                    serial_round_trips=math.ceil(groups / teams) * LN_GROUP_ROWS)
        out = _size(call, "dweight", "dbias")
        reduce = Work(dram_bytes=partials + out, global_bytes=partials + 2 * chunk_sums + out,
                      serial_round_trips=_ln_reduce_round_trips(math.ceil(groups / chunks), chunks))
        return [main, reduce][:n]
    if call.name == "cuda_layer_norm_bwd" and triton:
        # nanogpt_kernels/triton/layernorm.py: G programs (grid.x) load the weight once (register
        # path: into registers) and take row groups of _GROUP_ROWS rows, ROWS rows a step,
        # reading dy and xs (and ds) once and writing dx (and dx2); each group's sums are one fp32
        # row per gradient. The streamed (wide) rows read dy, xs and the weight twice per row, the
        # second time from L2, and pass each row's two sums through a scratch row. The reduce
        # reads the partial rows once (column tiles x chunks of them), writes each chunk's sums,
        # and a tile's last program reads them back; its chain: one BLOCK_G-row step per chunk,
        # then the chunk sums' steps.
        from nanogpt_kernels.triton import layernorm
        rows, C = call.tensors["mean"][0][0], call.tensors["weight"][0][0]
        es = call.tensors["dy"][1]
        main_launch, reduce_launch = call.launches
        G = main_launch["grid"][0]
        wide = "_wide" in main_launch["kernel"]
        step = layernorm._tiling(C, es, layernorm._BWD_MAX_CHUNKS).rows
        group_rows = layernorm._GROUP_ROWS
        groups = math.ceil(rows / group_rows)
        chunk_rows = layernorm._reduce_chunk_rows(groups, layernorm._REDUCE_BLOCK_G)
        chunks = math.ceil(groups / chunk_rows)
        gradients = 2 if "dbias" in call.tensors else 1
        c_pad = math.ceil(C / 4) * 4
        partials, chunk_sums = groups * gradients * c_pad * 4, chunks * gradients * c_pad * 4
        streamed = _size(call, "dy", "xs", "mean", "rstd", "ds", "dx", "dx2")
        # Streamed rows: the weight per row in the first pass and per group in the second; each
        # row's two sums written and read back, its mean and rstd read again.
        weights = (rows + groups) * C * es + rows * (16 + 8) if wide else G * C * es
        reread = _size(call, "dy", "xs") if wide else 0
        main = Work(dram_bytes=streamed + _size(call, "weight") + partials,
                    global_bytes=streamed + reread + weights + partials,
                    serial_round_trips=math.ceil(groups / G) * (2 * group_rows if wide
                                                                else math.ceil(group_rows / step)))
        out = _size(call, "dweight", "dbias")
        reduce = Work(dram_bytes=partials + out, global_bytes=partials + 2 * chunk_sums + out,
                      serial_round_trips=math.ceil(math.ceil(chunks * math.ceil(C / layernorm._REDUCE_BLOCK_C)
                                                             / reduce_launch["grid"][0]))
                      * _reduce_steps(call, chunk_rows) + _reduce_steps(call, chunks))
        return [main, reduce]
    if call.name == "cuda_layer_norm_bwd":
        # Per row, twice: dy, xs and weight (the first pass for the row sums, the second for dx,
        # with ds); and a read-modify-write of the team's fp32 partial rows of dweight and dbias
        # (the wide kernel of csrc/layernorm.cu). The reduce kernel sums those partials per
        # column; the partials torch.zeros clears first are not counted.
        rows, C = call.tensors["mean"][0][0], call.tensors["weight"][0][0]
        es = call.tensors["dy"][1]
        # The wide kernel's blocks write one partial row per row group.
        partials = math.ceil(rows / LN_GROUP_ROWS) * 2 * C * 4
        per_row = C * es * (3 + 4 + (1 if "ds" in call.tensors else 0)) + 4 * C * 4 + 8
        main = Work(dram_bytes=_size(call, "dy", "xs", "weight", "mean", "rstd", "ds", "dx", "dx2") + partials,
                    global_bytes=rows * per_row + partials,
                    serial_round_trips=2 * _rows_per_team(call, call.launches[0]))
        chunks = call.launches[-1]["grid"][1]
        steps = _ln_reduce_round_trips(math.ceil(math.ceil(rows / LN_GROUP_ROWS) / chunks), chunks)
        reduce = Work(dram_bytes=partials + _size(call, "dweight", "dbias"),
                      global_bytes=partials + _size(call, "dweight", "dbias"), serial_round_trips=steps)
        return [main, reduce][:n]
    if call.name == "cuda_gemm":
        (M, K), (_, N) = call.tensors["a"][0], call.tensors["b"][0]
        gemm = Work(flops=2.0 * M * N * K, dram_bytes=_all(call), global_bytes=_all(call))
        partials = (_split_k_chunks(call.launches[0], M, N) if call.launches else 1) * M * N * 4
        if partials > M * N * 4:
            # csrc/mlp.cu's split-K: each (tile, chunk) block stores its fp32 tile, which the
            # tile's last block reads back from L2 (a tile's chunks run side by side); L2 still
            # writes the dirty lines to DRAM once. The last block's loop over the chunks is a
            # tail after its main loop, left out of the round trips.
            gemm.dram_bytes += partials
            gemm.global_bytes += 2 * partials
        if "column_sums" not in call.tensors:
            return [gemm]
        # csrc/mlp.cu's fused column sums: the epilogue writes a float32 row per 64-row group of
        # D, which the column-sum launches then add up; the fp32 GEMM sums the groups in a pass
        # over D of its own.
        groups = math.ceil(M / MLP_GROUP_ROWS)
        columns = groups * N * 4
        works, rest = [gemm], call.launches[1:]
        if rest and "column_groups" in rest[0]["kernel"]:
            d = _size(call, "d")
            works.append(Work(dram_bytes=d + columns, global_bytes=d + columns))
            rest = rest[1:]
        else:
            gemm.dram_bytes += columns
            gemm.global_bytes += columns
        return works + _column_sum_works(call, rest, columns, N)
    if call.name == "cuda_column_sum":
        return _column_sum_works(call, call.launches, _size(call, "x"), call.tensors["out"][0][0])
    if call.name == "cuda_attention_fwd":
        pairs, D = _causal_pairs(call)
        return [Work(flops=2 * 2.0 * pairs * D, dram_bytes=_all(call), global_bytes=_all(call))]
    if call.name == "cuda_attention_bwd":
        pairs, D = _causal_pairs(call)
        delta = call.tensors["lse"][1] * math.prod(call.tensors["lse"][0])
        reads = _size(call, "q", "k", "v", "do", "lse") + delta
        out = []
        for launch in call.launches:
            if "delta" in launch["kernel"] or "preprocess" in launch["kernel"]:
                nbytes = _size(call, "o", "do") + delta
                out.append(Work(dram_bytes=nbytes, global_bytes=nbytes))
            elif "dkdv" in launch["kernel"]:
                nbytes = reads + _size(call, "dk", "dv")
                out.append(Work(flops=4 * 2.0 * pairs * D, dram_bytes=nbytes, global_bytes=nbytes))
            else:
                nbytes = reads + _size(call, "dq")
                out.append(Work(flops=3 * 2.0 * pairs * D, dram_bytes=nbytes, global_bytes=nbytes))
        return out
    return [Work(dram_bytes=_all(call), global_bytes=_all(call))] + [Work()] * (n - 1)  # normal_init: one pass


def ideal_bytes(call: Call) -> int:
    """Each input of the call read once, each output written once."""
    return _all(call)


# -- joining launches with the kernel report ---------------------------------------------------

def report_name(kernel: str) -> str:
    """The resource report's name of a harness kernel: nk_cuda:: for nk_cpu::, no `void`, no
    parameter list."""
    name = kernel.removeprefix("void ").replace("nk_cpu::", "nk_cuda::")
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0 and name[i] == "(":
            return name[:i]
    return name


@dataclass
class LaunchPrediction:
    model: str
    backend: str
    op: str
    phase: str
    call: str
    kernel: str
    arch: str
    gpu: str
    grid: list
    block: list
    ctas: int
    threads: int
    registers: int | None
    shared_bytes: int  # static + dynamic, per CTA
    ctas_per_sm: int
    occupancy_limiter: str
    wave_efficiency: float
    flops: float
    bytes_moved: float  # to and from DRAM
    global_bytes: float  # the kernel's own loads and stores
    issue_per_mma: float | None
    shared_bytes_per_mma: float | None
    in_flight_per_sm: float | None  # bytes of global memory an SM's resident CTAs can have outstanding
    wide_access_share: float | None  # of the kernel's global bytes, the share moved by 128-bit accesses
    bank_conflicts: dict  # ldmatrix / cp.async: wavefronts over the ideal (1.0: conflict-free)
    seconds: float
    limiter: str
    notes: list = field(default_factory=list)


def in_flight_per_cta(row, threads: int) -> float | None:
    """Bytes of global memory one CTA can have outstanding: what one iteration of the main loop
    moves per warp (or, without a loop, every access of the kernel), times its warps. An upper
    bound: a load whose result is used before the next is issued is not in flight with it."""
    warps = math.ceil(threads / 32)
    if row.loop_global_bytes:
        return row.loop_global_bytes * warps
    if row.global_loads is not None:
        wide = row.global_loads_128 or 0
        return ((row.global_loads - wide) * 4 + wide * 16) * 32 * warps
    return None


def wide_access_share(row) -> float | None:
    """Of the global bytes the kernel's load and store instructions move (each counted once,
    16 bytes for a 128-bit one, 4 for the others), the share of the 128-bit ones."""
    if row.global_loads is None or row.global_stores is None:
        return None
    wide = (row.global_loads_128 or 0) + (row.global_stores_128 or 0)
    narrow = row.global_loads + row.global_stores - wide
    return 16 * wide / (16 * wide + 4 * narrow) if wide + narrow else None


def predict_launches(calls: list[Call], rows: dict, gpu: GPU, label: str,
                     banks: dict | None = None) -> list[LaunchPrediction]:
    from tools.kernels import occupancy

    out = []
    for call in calls:
        for launch, w in zip(call.launches, work(call)):
            flops, nbytes = w.flops, w.dram_bytes
            backend = launch.get("source", "cuda")
            name = report_name(launch["kernel"]) if backend == "cuda" else launch["kernel"]
            row = rows.get((gpu.arch, name))
            threads = math.prod(launch["block"])
            ctas = math.prod(launch["grid"])
            # The report's static shared memory (a Triton kernel's is all of it) and the launch's dynamic.
            smem = launch["dynamic_smem"] + (row.shared_bytes or 0 if row else launch["static_smem"])
            notes = []
            if row is None:
                notes.append(f"not in the kernel report for {gpu.arch}: registers unknown, occupancy from shared "
                             "memory and threads only")
            occ = occupancy(row.registers if row else 0, smem, threads, gpu.arch)
            flight = in_flight_per_cta(row, threads) if row and not flops else None
            p = perf.predict(perf.Launch(flops=flops, bytes_moved=nbytes, ideal_bytes=nbytes, ctas=ctas,
                                         ctas_per_sm=occ["blocks_per_sm"],
                                         issue_per_mma=row.issue_per_mma if row else None,
                                         shared_bytes_per_mma=row.shared_bytes_per_mma if row else None,
                                         in_flight_per_cta=flight, serial_round_trips=w.serial_round_trips), gpu)
            seconds = max(p.seconds, MIN_LAUNCH_S)
            out.append(LaunchPrediction(
                model=label, backend=backend, op=call.op, phase=call.phase, call=call.name, kernel=name, arch=gpu.arch,
                gpu=gpu.name, grid=launch["grid"], block=launch["block"], ctas=ctas, threads=threads,
                registers=row.registers if row else None, shared_bytes=smem, ctas_per_sm=occ["blocks_per_sm"],
                occupancy_limiter=occ["limiter"], wave_efficiency=p.wave_efficiency, flops=flops, bytes_moved=nbytes,
                global_bytes=w.global_bytes,
                issue_per_mma=row.issue_per_mma if row else None,
                shared_bytes_per_mma=row.shared_bytes_per_mma if row else None,
                in_flight_per_sm=flight * occ["blocks_per_sm"] if flight is not None else None,
                wide_access_share=wide_access_share(row) if row and not flops else None,
                bank_conflicts=(banks or {}).get(name, {}),
                seconds=seconds, limiter=p.limiter if seconds > MIN_LAUNCH_S else "launch", notes=notes))
    return out


# -- eager PyTorch ----------------------------------------------------------------------------

def _gemm_s(M, N, K, gpu: GPU) -> float:
    return max(2.0 * M * N * K / (gpu.tensor_flops * EAGER[gpu.arch]["gemm"]), MIN_LAUNCH_S)


def _passes_s(nbytes: list[float], gpu: GPU) -> float:
    """Memory-bound kernels, one per entry, each moving that many bytes."""
    return sum(max(b / (gpu.dram_bandwidth * EAGER[gpu.arch]["memory"]), MIN_LAUNCH_S) for b in nbytes)


def eager_seconds(op: str, phase: str, shapes: Shapes, gpu: GPU) -> float:
    """Eager PyTorch's time for one layer's op (nanoGPT's modules), from the fractions in EAGER.

    layernorm  forward: the residual add (2 reads, 1 write) when there is one, F.layer_norm
               (read, write, mean and rstd); backward: layer_norm_backward's dx kernel (dy, x,
               stats in, dx out) and its dgamma/dbeta kernel (dy, x again), the add's gradient
               sum (2 reads, 1 write)
    attention  SDPA (FlashAttention-2) at its fraction of peak, FLOPs of the causal half, the
               backward 2.5x the forward
    mlp        forward: two GEMMs (bias in cuBLASLt's epilogue), GELU (read, write the M x 4C
               activation); backward: four GEMMs, GELU's backward (2 reads, 1 write), the two
               bias gradients as column sums of dY and dA
    init       torch.nn.init.normal_ per weight matrix, one pass each"""
    M, C, b = shapes.rows, shapes.hidden, DTYPE.itemsize
    act, stats = M * C * b, 2 * M * 4
    add = [3 * act] if shapes.residual else []
    if op == "layernorm":
        if phase == "forward":
            return _passes_s(add + [2 * act + stats], gpu)
        return _passes_s([3 * act + stats, 2 * act + stats] + add, gpu)
    if op == "attention":
        B, H, D, t = shapes.batch, shapes.heads, shapes.head_dim, shapes.seq
        fwd = 4.0 * B * H * t * (t + 1) / 2 * D
        flops = fwd if phase == "forward" else 2.5 * fwd
        fraction = EAGER[gpu.arch]["attention_fwd" if phase == "forward" else "attention_bwd"]
        return max(flops / (gpu.tensor_flops * fraction), MIN_LAUNCH_S)
    if op == "mlp":
        F = shapes.mlp_hidden
        hidden = M * F * b
        if phase == "forward":
            return 2 * _gemm_s(M, F, C, gpu) + _passes_s([2 * hidden], gpu)
        return (4 * _gemm_s(M, F, C, gpu) + _passes_s([3 * hidden], gpu)
                + _passes_s([act, hidden], gpu))
    if op == "init":
        return _passes_s([math.prod(s) * 4 for s in shapes.init], gpu) if phase == "forward" else 0.0
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def shared_seconds(model: Model, gpu: GPU) -> dict:
    """What both paths leave to PyTorch in one training step, forward and backward: per layer the
    QKV (C -> 3C) and output (C -> C) projections (3 GEMMs each with the backward); lm_head
    (C -> vocab, tied to wte: 3 GEMMs); cross-entropy over the bf16 logits (softmax forward and
    backward: ~4 passes over M x vocab); the embedding (gather forward, scatter-add backward);
    AdamW over fp32 parameters, gradients and two moments (~7 passes of 4 bytes per parameter)."""
    M, C, b = model.tokens, model.n_embd, DTYPE.itemsize
    params = sum(math.prod(s) for s in init_shapes(model)) + model.n_layer * 10 * C
    return {
        "projections": model.n_layer * 3 * (_gemm_s(M, 3 * C, C, gpu) + _gemm_s(M, C, C, gpu)),
        "lm_head": 3 * _gemm_s(M, VOCAB, C, gpu),
        "cross_entropy": _passes_s([4 * M * VOCAB * b], gpu),
        "embedding": _passes_s([2 * M * C * b, 2 * M * C * 4], gpu),
        "adamw": _passes_s([7 * 4 * params], gpu),
    }


# -- the benchmarks' shapes -----------------------------------------------------------------------

# The benchmark suite's ops (benchmarks/bench_*.py) and the op of this model each one times.
BENCH_OPS = {"layer_norm": "layernorm", "add_layer_norm": "layernorm", "causal_attention": "attention",
             "gelu_mlp": "mlp", "normal_init": "init"}


def bench_shapes(op: str, shape: dict) -> Shapes:
    """The Shapes of one benchmark case (its record's shape columns)."""
    if op in ("layer_norm", "add_layer_norm"):
        return Shapes(shape["rows"], 1, shape["hidden"], residual=op == "add_layer_norm")
    if op == "causal_attention":
        return Shapes(shape["B"], shape["T"], shape["H"] * shape["D"], shape["H"])
    if op == "gelu_mlp":
        return Shapes(shape["M"], 1, shape["C"], mlp_hidden=shape["H"])
    if op == "normal_init":
        return Shapes(1, 1, 1, init=((shape["params"],),))
    raise ValueError(f"op must be one of {sorted(BENCH_OPS)}, got {op!r}")


def predict_bench(op: str, shape: dict, gpu: GPU, rows: dict) -> dict:
    """{"cuda": {mode: seconds}, "eager": {mode: seconds}} of one benchmark case on `gpu`, modes
    as the benchmarks name them (fwd, bwd, fwd+bwd)."""
    shapes = bench_shapes(op, shape)
    calls = record_step(shapes, (BENCH_OPS[op],), sm_count=gpu.sms, rows=rows, arch=gpu.arch)
    ops = predict_ops(calls, predict_launches(calls, rows, gpu, op), shapes, op, gpu)
    out = {"cuda": {}, "eager": {}}
    for o in ops:
        mode = "fwd" if o.phase == "forward" else "bwd"
        out["cuda"][mode], out["eager"][mode] = o.ours_s, o.eager_s
    for side in out.values():
        side["fwd+bwd"] = sum(side.values())
    return out


# -- the report ------------------------------------------------------------------------------

@dataclass
class OpPrediction:
    model: str
    gpu: str
    backend: str
    op: str
    phase: str
    ours_s: float
    eager_s: float
    launches: int
    ideal_bytes: float
    bytes_moved: float  # the kernels' own loads and stores
    flops: float
    roofline_s: float
    wave_efficiency: float  # of its launches, weighted by their predicted time

    @property
    def speedup(self) -> float:
        return self.eager_s / self.ours_s if self.ours_s else 0.0

    @property
    def fraction_of_roofline(self) -> float:
        return self.roofline_s / self.ours_s if self.ours_s else 0.0


def predict_ops(calls: list[Call], launches: list[LaunchPrediction], shapes: Shapes, label: str,
                gpu: GPU, backend: str = "cuda") -> list[OpPrediction]:
    out = []
    for op in dict.fromkeys(c.op for c in calls):
        for phase in PHASES:
            mine = [lp for lp in launches if lp.op == op and lp.phase == phase]
            op_calls = [c for c in calls if c.op == op and c.phase == phase]
            if not mine:
                continue
            flops = sum(lp.flops for lp in mine)
            ideal = sum(ideal_bytes(c) for c in op_calls)
            out.append(OpPrediction(
                model=label, gpu=gpu.name, backend=backend, op=op, phase=phase, ours_s=sum(lp.seconds for lp in mine),
                eager_s=eager_seconds(op, phase, shapes, gpu), launches=len(mine), ideal_bytes=ideal,
                bytes_moved=sum(lp.global_bytes for lp in mine), flops=flops,
                roofline_s=max(flops / gpu.tensor_flops, ideal / gpu.dram_bandwidth),
                wave_efficiency=sum(lp.wave_efficiency * lp.seconds for lp in mine) / sum(lp.seconds for lp in mine)))
    return out


def predict_step(ops: list[OpPrediction], model: Model, gpu: GPU, backend: str = "cuda") -> dict:
    """One training step: per layer two add+LayerNorms, attention and the MLP; plus the rest."""
    per_layer = {"layernorm": 2, "attention": 1, "mlp": 1}
    ours = sum(o.ours_s * per_layer[o.op] for o in ops if o.op in per_layer) * model.n_layer
    eager = sum(o.eager_s * per_layer[o.op] for o in ops if o.op in per_layer) * model.n_layer
    roofline = sum(o.roofline_s * per_layer[o.op] for o in ops if o.op in per_layer) * model.n_layer
    rest = shared_seconds(model, gpu)
    covered = {o.op for o in ops} >= set(per_layer)
    return {"model": model.name, "gpu": gpu.name, "backend": backend, "tokens": model.tokens, "complete": covered,
            "ours_layers_s": ours, "eager_layers_s": eager, "roofline_layers_s": roofline,
            "rest_s": sum(rest.values()), "rest": rest,
            "ours_s": ours + sum(rest.values()), "eager_s": eager + sum(rest.values()),
            "speedup": (eager + sum(rest.values())) / (ours + sum(rest.values()))}


def cuda_rows(archs) -> dict:
    """{(arch, kernel name): KernelResources} of the CUDA kernels (compiled, or from the cache)."""
    from tools.kernels import cuda_resources
    return {(r.arch, r.name): r for r in cuda_resources(archs)}


def rows_from_report(path) -> dict:
    """The rows of a kernel report written by `python -m tools kernels --json PATH`, keyed like
    kernel_rows: a run that has the report already need not compile again."""
    from tools.kernels import KernelResources
    data = json.loads(Path(path).read_text())
    return {(r["arch"], r["name"]): KernelResources(**r) for r in data["kernels"]}


def kernel_rows(backends=BACKENDS) -> dict:
    """{(arch, kernel or Triton config name): KernelResources} of both archs: the report's cache
    holds the build of both, whatever GPUs are asked for."""
    rows = cuda_rows(("sm_80", "sm_90a")) if "cuda" in backends else {}
    if "triton" in backends:
        from tools.kernels import triton_resources
        rows.update({(r.arch, r.name): r for r in triton_resources((80, 90))})
    return rows


def record_backend(shapes: Shapes, ops, backend: str, gpu: GPU, rows: dict) -> list[Call]:
    """One layer's launches on `backend`, as `gpu` would get them."""
    if backend == "cuda":
        return record_step(shapes, ops, sm_count=gpu.sms, rows=rows, arch=gpu.arch)
    from tools.triton_launches import record_triton_step
    return record_triton_step(shapes, ops, cc=int(gpu.arch[3:5]), sm_count=gpu.sms)


def predict(models=("gpt2", "gpt2-medium"), gpus=DEFAULT_GPUS, ops=OPS, rows=None, banks=True,
            backends=BACKENDS) -> dict:
    """Everything the command prints, as data: per model, backend and GPU, the launches, the calls,
    the ops and the step; with `banks`, the bank conflicts of each CUDA kernel's sampled blocks at
    the model's shapes (Triton's interpreter has no shared memory to count)."""
    gpus = [GPUS[g] for g in gpus]
    rows = kernel_rows(backends) if rows is None else rows
    out = {"launches": [], "calls": [], "ops": [], "steps": []}
    for key in models:
        model = MODELS[key]
        conflicts = (record_banks(model.shapes, ops, [gpu.sms for gpu in gpus])
                     if banks and "cuda" in backends else None)
        for backend in backends:
            recorded = {}  # launches differ only by arch (occupancy, capability) and SM count
            for gpu in gpus:
                target = f"{gpu.arch}/{gpu.sms}"
                if target not in recorded:
                    recorded[target] = calls = record_backend(model.shapes, ops, backend, gpu, rows)
                    out["calls"] += [{"model": model.name, "backend": backend, "target": target, "op": c.op,
                                      "phase": c.phase, "call": c.name, "flops": sum(w.flops for w in work(c)),
                                      "bytes_moved": sum(w.global_bytes for w in work(c)),
                                      "ideal_bytes": ideal_bytes(c)} for c in calls]
                calls = recorded[target]
                launches = predict_launches(calls, rows, gpu, model.name, conflicts)
                op_predictions = predict_ops(calls, launches, model.shapes, model.name, gpu, backend)
                out["launches"] += launches
                out["ops"] += op_predictions
                out["steps"].append(predict_step(op_predictions, model, gpu, backend))
    return out


def _us(s: float) -> str:
    return f"{s * 1e6:9.1f}"


def format_ops(result: dict) -> str:
    lines = [f"{'model':<11} {'gpu':<15} {'backend':<7} {'op':<10} {'phase':<8} {'ours us':>9} {'eager us':>9} "
             f"{'speedup':>7} {'roofline':>8} {'waves':>6} {'bytes/ideal':>11}"]
    for o in result["ops"]:
        lines.append(f"{o.model:<11} {o.gpu:<15} {o.backend:<7} {o.op:<10} {o.phase:<8} {_us(o.ours_s)} {_us(o.eager_s)} "
                     f"{o.speedup:6.2f}x {o.fraction_of_roofline:7.0%} {o.wave_efficiency:6.0%} "
                     f"{o.bytes_moved / o.ideal_bytes if o.ideal_bytes else 0:10.2f}x")
    return "\n".join(lines)


def format_launches(result: dict) -> str:
    lines = [f"{'model':<11} {'gpu':<15} {'backend':<7} {'op':<9} {'phase':<8} {'kernel':<58} {'CTAs':>6} {'/SM':>3} {'waves':>6} "
             f"{'us':>8} {'limiter':<8} {'in flight/SM':>12} {'banks':>6}"]
    for lp in result["launches"]:
        kernel = lp.kernel if len(lp.kernel) <= 58 else lp.kernel[:55] + "..."
        flight = f"{lp.in_flight_per_sm / 1024:9.1f} KB" if lp.in_flight_per_sm is not None else ""
        banks = f"{max(lp.bank_conflicts.values()):5.2f}x" if lp.bank_conflicts else ""
        lines.append(f"{lp.model:<11} {lp.gpu:<15} {lp.backend:<7} {lp.op:<9} {lp.phase:<8} {kernel:<58} {lp.ctas:6d} "
                     f"{lp.ctas_per_sm:3d} {lp.wave_efficiency:6.0%} {lp.seconds * 1e6:8.1f} {lp.limiter:<8} "
                     f"{flight:>12} {banks:>6}")
    return "\n".join(lines)


def format_steps(result: dict) -> str:
    lines = [f"{'model':<11} {'gpu':<15} {'backend':<7} {'ours ms':>8} {'eager ms':>8} {'speedup':>7} {'roofline':>8}   "
             "(per step; roofline: of our layers' ops; in brackets what both leave to PyTorch: projections, "
             "lm_head, loss, embedding, AdamW)"]
    for s in result["steps"]:
        roofline = s["roofline_layers_s"] / s["ours_layers_s"] if s["ours_layers_s"] else 0.0
        lines.append(f"{s['model']:<11} {s['gpu']:<15} {s['backend']:<7} {s['ours_s'] * 1e3:8.2f} {s['eager_s'] * 1e3:8.2f} "
                     f"{s['speedup']:6.2f}x {roofline:7.0%}   ({s['rest_s'] * 1e3:.2f} ms)")
    return "\n".join(lines)


def format_gpus(gpus) -> str:
    """The limits the predictions used, per GPU, and where they come from."""
    from benchmarks.gpus import HMMA_FLOP, ISSUE_SLOTS_PER_CLOCK, SHARED_BYTES_PER_CLOCK
    lines = [f"{'gpu':<15} {'SMs':>4} {'clock GHz':>9} {'bf16 TFLOP/s':>12} {'mma.sync':>8} {'HBM TB/s':>8} "
             f"{'clocks/HMMA':>11} {'issue/clk':>9} {'smem B/clk':>10}  source"]
    for g in gpus:
        lines.append(f"{g.name:<15} {g.sms:4d} {g.clock_hz / 1e9:9.2f} {g.tensor_flops / 1e12:12.0f} "
                     f"{g.mma_sync_ceiling:8.0%} {g.dram_bandwidth / 1e12:8.2f} "
                     f"{HMMA_FLOP / g.tensor_flop_per_clock_per_sm:11.0f} "
                     f"{ISSUE_SLOTS_PER_CLOCK:9d} {SHARED_BYTES_PER_CLOCK:10d}  {g.source}")
    lines.append("mma.sync: the share of the dense peak our mma.sync kernels can reach (Hopper's peak needs wgmma; "
                 "benchmarks/gpus.py says why 65%); DRAM latency for Little's law "
                 f"{perf.DRAM_LATENCY_S * 1e9:.0f} ns; eager: {json.dumps(EAGER)}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = ["| model | GPU | backend | op | phase | ours (us) | eager (us) | speedup | of roofline |",
           "|---|---|---|---|---|---:|---:|---:|---:|"]
    for o in result["ops"]:
        out.append(f"| {o.model} | {o.gpu} | {o.backend} | {o.op} | {o.phase} | {o.ours_s * 1e6:.1f} | "
                   f"{o.eager_s * 1e6:.1f} | {o.speedup:.2f}x | {o.fraction_of_roofline:.0%} |")
    out += ["", "| model | GPU | backend | step, ours (ms) | step, eager (ms) | speedup |",
            "|---|---|---|---:|---:|---:|"]
    for s in result["steps"]:
        out.append(f"| {s['model']} | {s['gpu']} | {s['backend']} | {s['ours_s'] * 1e3:.2f} | {s['eager_s'] * 1e3:.2f} | "
                   f"{s['speedup']:.2f}x |")
    return "\n".join(out) + "\n"


def budget_figures(result: dict) -> dict:
    """{section: {key: {figure: value}}} of the budgets' "launches", "calls" and "ops" sections
    (tools/budgets.py), for the GPUs of BUDGET_GPUS in the result."""
    names = {GPUS[g].name: g for g in BUDGET_GPUS}
    # The calls were recorded once per SM count (CUDA) or arch and SM count (Triton): named by the
    # budget GPU.
    targets = {t: g for g in BUDGET_GPUS for t in (GPUS[g].sms, f"{GPUS[g].arch}/{GPUS[g].sms}")}
    out = {"launches": {}, "calls": {}, "ops": {}}
    index = {}
    for lp in result["launches"]:
        if lp.gpu not in names:
            continue
        group = (lp.gpu, lp.model, lp.backend, lp.op, lp.phase)
        index[group] = index.get(group, 0) + 1
        figures = {"wave_efficiency": lp.wave_efficiency}
        if lp.bank_conflicts:
            figures["bank_conflicts"] = max(lp.bank_conflicts.values())
        if lp.in_flight_per_sm is not None:
            figures["in_flight_kb"] = lp.in_flight_per_sm / 1024
        if lp.wide_access_share is not None:
            figures["wide_access_share"] = lp.wide_access_share
        out["launches"][f"{names[lp.gpu]} {lp.model} {lp.backend} {lp.op} {lp.phase} #{index[group]} {lp.kernel}"] = figures
    index = {}
    for c in result["calls"]:
        group = (c["model"], c["backend"], c["target"], c["op"], c["phase"])
        index[group] = index.get(group, 0) + 1
        if not c["flops"] and c["ideal_bytes"] and c["target"] in targets:
            out["calls"][f"{c['model']} {c['backend']} {targets[c['target']]} {c['op']} {c['phase']} "
                         f"#{index[group]} {c['call']}"] = {
                "bytes_ratio": c["bytes_moved"] / c["ideal_bytes"]}
    for o in result["ops"]:
        if o.gpu in names:
            out["ops"][f"{names[o.gpu]} {o.model} {o.backend} {o.op} {o.phase}"] = {"speedup": o.speedup}
    return out


def check_budgets(result: dict, budget_file: dict, banks: bool = True) -> list[str]:
    """One line per figure worse than its budget (or without one); without `banks` (not counted
    in this run), the bank-conflict budgets are not checked."""
    figures = budget_figures(result)
    if not banks:
        for current in figures["launches"].values():
            current.pop("bank_conflicts", None)
    return [line for section in figures
            for line in budgets.check_section(figures[section], budget_file.get(section, {}), "python -m tools predict")]


def record_budgets(result: dict, previous: dict, date: str) -> dict:
    """The budget file with today's "launches", "calls" and "ops" figures as baselines and budgets."""
    out = {**previous, "recorded": date, "targets": budgets.TARGETS}
    for section, current in budget_figures(result).items():
        out[section] = {name: budgets.entry(figures) for name, figures in current.items()}
    return out


def to_json(result: dict) -> dict:
    return {"launches": [asdict(lp) for lp in result["launches"]], "calls": result["calls"],
            "ops": [{**asdict(o), "speedup": o.speedup, "fraction_of_roofline": o.fraction_of_roofline}
                    for o in result["ops"]],
            "steps": result["steps"], "eager_fractions": EAGER, "min_launch_s": MIN_LAUNCH_S}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), action="append", help="default: both")
    p.add_argument("--gpu", choices=sorted(GPUS), action="append", help=f"default: {', '.join(DEFAULT_GPUS)}")
    p.add_argument("--op", choices=OPS, action="append", help="default: every op")
    p.add_argument("--backend", choices=BACKENDS, action="append", help="default: both")
    p.add_argument("--launches", action="store_true", help="also print every kernel launch")
    p.add_argument("--json", metavar="PATH", help="write everything as JSON here")
    p.add_argument("--markdown", metavar="PATH", help="write the per-op and per-step tables as markdown here")
    p.add_argument("--no-banks", action="store_true",
                   help="skip the bank-conflict count (it runs two blocks of every launch in the harness, ~10 s "
                        "per model)")
    p.add_argument("--budgets", default=str(budgets.DEFAULT_PATH), metavar="PATH",
                   help="the budget file the launches, calls and ops are checked against (tools/budgets.py; "
                        "default: %(default)s); a figure worse than its budget fails the run")
    p.add_argument("--record-budgets", action="store_true",
                   help="write this run's launch, call and op figures into the budget file as baselines and "
                        "budgets (needs the full run: no --model, --gpu, --op, --backend or --no-banks)")
    args = p.parse_args(argv)
    if args.record_budgets and (args.model or args.gpu or args.op or args.backend or args.no_banks):
        p.error("--record-budgets records the full run: drop --model, --gpu, --op, --backend and --no-banks")
    result = predict(models=args.model or tuple(MODELS), gpus=args.gpu or DEFAULT_GPUS, ops=args.op or OPS,
                     banks=not args.no_banks, backends=args.backend or BACKENDS)
    if args.launches:
        print(format_launches(result) + "\n")
    print(format_ops(result) + "\n")
    print(format_steps(result) + "\n")
    print(format_gpus([GPUS[g] for g in args.gpu or DEFAULT_GPUS]))
    print("\nPredictions from the static model (tools/predict.py, tools/perf.py), not measurements.")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(result), indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
    if args.record_budgets:
        budgets.write(record_budgets(result, budgets.load(args.budgets), time.strftime("%Y-%m-%d")), args.budgets)
        print(f"budgets recorded in {args.budgets}")
    loaded = budgets.load(args.budgets)
    over = check_budgets(result, loaded, banks=not args.no_banks)
    if over:
        print(f"\n{len(over)} budget(s) not met ({args.budgets}):\n" + "\n".join(over))
        return 1
    missing = sum(bool(e["misses"]) for section in ("launches", "calls", "ops") for e in loaded.get(section, {}).values())
    print(f"\nbudgets: every launch, call and op within its budget; {missing} still miss their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
