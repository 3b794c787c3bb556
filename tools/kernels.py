"""Kernel resource report: `python -m tools kernels [--json PATH]`, from the source checkout. No GPU needed.

Every `csrc/*.cu` kernel and every Triton configuration (those of each
`nanogpt_kernels.triton.<op>.compile_configs()`, with the argument types and alignment that
tools/triton_configs.py records from the launchers) is compiled for sm_80 (A100) and sm_90a
(H100), and for each kernel and arch the report gives

    regs, spills, stack, smem   ptxas's figures
    threads                     the block size: `.maxntid` in the PTX (`__launch_bounds__`) for
                                CUDA kernels, num_warps x 32 for Triton
    occupancy                   theoretical occupancy (resident warps / 64) from registers, shared
                                memory and block size against the arch's per-SM limits, and what
                                limits it (the CUDA occupancy calculator's arithmetic)
    tensor cores                HMMA (mma.sync) + HGMMA (wgmma) instructions in the SASS
    128-bit ld/st               LDG/LDGSTS/STG instructions with a .128 width in the SASS
    main loop                   what one iteration of the kernel's main loop issues per warp
                                (tools/sass.py): instructions, m16n8k16 equivalents, shared and
                                global bytes, barriers; issue slots and shared bytes per HMMA

CUDA: one `nvcc -fatbin -keep -Xptxas -v` per source with the real build's flags
(nanogpt_kernels/_build_flags.py); ptxas's report gives registers, spills, stack and static shared
memory, the kept PTX the block sizes, `cuobjdump -sass` of the kept cubins the instructions.
Triton: `triton.compile` builds the cubin Triton would load; `cuobjdump -res-usage -sass` gives
registers, local memory and the instructions, and a kernel with local memory goes through
ptxas -v (Triton's own options) to tell spills from stack.

Cache: what each compile measured (per CUDA source; per Triton config and arch) is kept in
$NANOGPT_KERNELS_TOOLS_CACHE (default ~/.cache/nanogpt_kernels/tools), under a hash of all that
decides it: for CUDA the source, every header beside it (csrc/**/*.h, *.cuh), the flags, the
archs and the nvcc, cuobjdump and c++filt in use; for Triton the kernel's source and that of
every @jit function and global it uses (Triton's own JITFunction.cache_key), the configuration,
the arch, Triton's version and its ptxas. A run compiles only what changed; delete the folder to
start afresh.

Kernels are classified by name (so name them accordingly):
    gemm       matrix-product kernels: names with attn/attention, gemm, matmul or mlp, except the
               row-wise helpers below; they must use tensor cores
    gemm-fp32  the same in float32 (names with f32/fp32 or a `float` template argument): FMA by
               design, tensor cores optional
    memory     memory-bound kernels (layernorm / layer_norm, normal_init): 128-bit accesses expected
    other      the rest (reductions, attention's backward preprocess, column sums)

Problems (exit status 1): any spill, shared memory above the per-block limit, more registers
than a thread may have, a kernel that cannot fit one block on an SM, a `gemm` kernel without
tensor-core instructions, and a source or module that does not compile (or whose report cannot
be read). A `memory` kernel without 128-bit accesses is a note, not a problem (a reduction over a
few values need not vectorise).

What it cannot see: the dynamic shared memory of CUDA kernels (`extern __shared__`, the
launcher's run-time choice): their smem and occupancy count the static part only; CUDA kernels
without `__launch_bounds__` have no block size in their PTX, so no occupancy; a dynamically
indexed local array lives in local memory by design, so it shows as stack, not as a spill;
reports are per kernel entry point, not per non-inlined `__device__` function.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Sequence

from benchmarks.gpus import GPUS
from nanogpt_kernels._build_flags import NVCC_FLAGS, gencode_flags
from nanogpt_kernels._limits import SHARED_BYTES_PER_BLOCK
from tools import budgets, progress
from tools import sass as sass_reader

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


class ArchLimits(NamedTuple):
    """One architecture's limits (CUDA C Programming Guide, compute capabilities table; the CUDA
    occupancy calculator's allocation granularities), and the SM count of its reference GPU."""
    gpu: str
    sms: int  # streaming multiprocessors of `gpu`
    shared_per_sm: int  # bytes of shared memory per SM at the largest carve-out
    shared_per_block: int  # bytes one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin)
    max_warps: int = 64  # resident warps per SM (2048 threads)
    max_blocks: int = 32  # resident blocks per SM
    max_threads_per_block: int = 1024
    registers: int = 65536  # 32-bit registers per SM
    register_unit: int = 256  # registers are allocated per warp in units of 256
    warp_granularity: int = 4  # ... for groups of 4 warps (one per SM sub-partition)
    max_registers_per_thread: int = 255
    shared_reserved: int = 1024  # bytes the system reserves per resident block (CUDA 11+)
    shared_unit: int = 128  # shared memory allocation granularity


# An arch missing here cannot be checked, so it is refused.
ARCH_LIMITS = {
    "sm_80": ArchLimits("A100", GPUS["A100-SXM-80GB"].sms, shared_per_sm=167936,  # 164 KB / 163 KB
                        shared_per_block=SHARED_BYTES_PER_BLOCK["sm_80"]),
    "sm_90a": ArchLimits("H100 SXM", GPUS["H100-SXM"].sms, shared_per_sm=233472,  # 228 KB / 227 KB
                         shared_per_block=SHARED_BYTES_PER_BLOCK["sm_90a"]),
}

KINDS = ("gemm", "gemm-fp32", "memory", "other")
_GEMM_LIKE = re.compile(r"attn|attention|gemm|matmul|mlp", re.IGNORECASE)
_NOT_GEMM = re.compile(r"preprocess|delta|reduce|column_?sum|colsum|dbias|bias_grad", re.IGNORECASE)
_FP32 = re.compile(r"f32|fp32|\bfloat\b", re.IGNORECASE)
_MEMORY = re.compile(r"layer_?norm|normal_init", re.IGNORECASE)

# Columns of the JSON rows and of the table, in order.
COLUMNS = ("source", "file", "name", "arch", "kind", "registers", "spill_stores", "spill_loads", "stack_bytes",
           "shared_bytes", "threads", "blocks_per_sm", "occupancy", "occupancy_limiter", "tensor_core_instructions",
           "hmma", "hgmma", "global_loads", "global_loads_128", "global_stores", "global_stores_128",
           "loop_instructions", "loop_mma_equivalents", "loop_shared_bytes", "loop_global_bytes", "loop_barriers",
           "issue_per_mma", "shared_bytes_per_mma", "problems", "notes")
# The main loop's figures, per iteration and warp (tools/sass.py's LoopMix fields after "loop_").
LOOP_COLUMNS = ("loop_instructions", "loop_mma_equivalents", "loop_shared_bytes", "loop_global_bytes", "loop_barriers")


@dataclass
class KernelResources:
    source: str  # "cuda" or "triton"
    file: str  # csrc/<op>.cu or the Triton module
    name: str  # demangled kernel name without its parameter list, or the Triton config name
    arch: str
    kind: str  # one of KINDS
    registers: int | None = None
    spill_stores: int | None = None  # bytes
    spill_loads: int | None = None  # bytes
    stack_bytes: int | None = None
    shared_bytes: int | None = None  # static (CUDA) or all (Triton)
    threads: int | None = None
    blocks_per_sm: int | None = None
    occupancy: float | None = None  # resident warps / max warps, 0..1
    occupancy_limiter: str | None = None
    tensor_core_instructions: int | None = None
    hmma: int | None = None
    hgmma: int | None = None
    global_loads: int | None = None
    global_loads_128: int | None = None
    global_stores: int | None = None
    global_stores_128: int | None = None
    loop_instructions: int | None = None
    loop_mma_equivalents: float | None = None  # m16n8k16 equivalents
    loop_shared_bytes: int | None = None
    loop_global_bytes: int | None = None
    loop_barriers: int | None = None
    issue_per_mma: float | None = None  # derived: loop_instructions / loop_mma_equivalents
    shared_bytes_per_mma: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- arithmetic ------------------------------------------------------------------------------------

def kernel_kind(name: str) -> str:
    if _GEMM_LIKE.search(name) and not _NOT_GEMM.search(name):
        return "gemm-fp32" if _FP32.search(name) else "gemm"
    if _MEMORY.search(name):
        return "memory"
    return "other"


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(registers: int, shared_bytes: int, threads: int, arch: str) -> dict:
    """Theoretical occupancy of a kernel on `arch`: {"blocks_per_sm", "warps_per_sm",
    "occupancy" (0..1), "limiter"}, the CUDA occupancy calculator's arithmetic. Zero blocks when
    one block does not fit (too many registers or threads, too much shared memory)."""
    lim = ARCH_LIMITS[arch]
    warps = math.ceil(threads / 32)
    fits = warps <= lim.max_warps and threads <= lim.max_threads_per_block
    limits = {"warps": lim.max_warps // warps if fits else 0, "blocks": lim.max_blocks}
    if registers > lim.max_registers_per_thread:
        limits["registers"] = 0
    elif registers > 0:
        per_warp = _round_up(registers * 32, lim.register_unit)
        warps_by_registers = (lim.registers // per_warp) // lim.warp_granularity * lim.warp_granularity
        limits["registers"] = warps_by_registers // warps
    if shared_bytes > lim.shared_per_block:
        limits["shared memory"] = 0
    else:
        limits["shared memory"] = lim.shared_per_sm // _round_up(shared_bytes + lim.shared_reserved, lim.shared_unit)
    blocks = min(limits.values())
    # The limiter: the smallest limit, preferring the resource over the fixed caps on a tie;
    # none at full occupancy.
    order = ("registers", "shared memory", "warps", "blocks")
    limiter = min(order, key=lambda k: (limits.get(k, 1 << 30), order.index(k)))
    if blocks * warps == lim.max_warps:
        limiter = "none"
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps,
            "occupancy": blocks * warps / lim.max_warps, "limiter": limiter}


_INSTRUCTION = re.compile(r"\b(HGMMA|HMMA|LDGSTS|LDG|STG)\b((?:\.\w+)*)")
_FUNCTION = re.compile(r"^\s*Function : (\S+)\s*$", re.MULTILINE)


def sass_counts(sass: str) -> dict[str, dict[str, int]]:
    """{function name: instruction counts} from `cuobjdump -sass` output: hmma, hgmma,
    global_loads (LDG and LDGSTS), global_loads_128, global_stores (STG), global_stores_128, and
    what one iteration of the main loop issues per warp (LOOP_COLUMNS, None without a loop;
    tools/sass.py)."""
    out = {}
    starts = list(_FUNCTION.finditer(sass))
    for i, m in enumerate(starts):
        body = sass[m.end():starts[i + 1].start() if i + 1 < len(starts) else len(sass)]
        counts = dict.fromkeys(("hmma", "hgmma", "global_loads", "global_loads_128", "global_stores",
                                "global_stores_128"), 0)
        for op, suffix in _INSTRUCTION.findall(body):
            wide = ".128" in suffix
            if op == "HMMA":
                counts["hmma"] += 1
            elif op == "HGMMA":
                counts["hgmma"] += 1
            elif op == "STG":
                counts["global_stores"] += 1
                counts["global_stores_128"] += wide
            else:
                counts["global_loads"] += 1
                counts["global_loads_128"] += wide
        out[m[1]] = counts
    for name, instructions in sass_reader.functions(sass).items():
        loop = sass_reader.main_loop(instructions)
        out[name].update({k: getattr(loop, k[5:]) if loop else None for k in LOOP_COLUMNS})
    return out


_PTX_ENTRY = re.compile(r"\.entry\s+([\w$.]+)\s*\(")
_MAXNTID = re.compile(r"\.(?:maxntid|reqntid)\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")


def ptx_block_sizes(ptx: str) -> dict[str, int]:
    """{kernel: threads per block} from `.maxntid x, y, z` (or `.reqntid`) of each PTX entry;
    kernels without either (no `__launch_bounds__`) are left out."""
    out = {}
    entries = list(_PTX_ENTRY.finditer(ptx))
    for i, m in enumerate(entries):
        end = entries[i + 1].start() if i + 1 < len(entries) else len(ptx)
        header = ptx[m.end():ptx.find("{", m.end(), end) if ptx.find("{", m.end(), end) >= 0 else end]
        if d := _MAXNTID.search(header):
            out[m[1]] = math.prod(int(x) for x in d.groups() if x)
    return out


_RESOURCES = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(dump: str) -> dict[str, tuple[int, int, int]]:
    """{function: (registers, local bytes per thread, static shared bytes)} from `cuobjdump -res-usage`."""
    return {m[1]: (int(m[2]), int(m[5]), int(m[4])) for m in _RESOURCES.finditer(dump)}


def finish(r: KernelResources) -> KernelResources:
    """Fill in occupancy and the problems of a row whose compiler figures are set."""
    lim = ARCH_LIMITS[r.arch]
    if r.spill_stores or r.spill_loads:
        r.problems.append(f"spills {r.spill_stores} bytes stored, {r.spill_loads} bytes loaded")
    if r.shared_bytes is not None and r.shared_bytes > lim.shared_per_block:
        r.problems.append(f"shared memory {r.shared_bytes} bytes > {r.arch} limit {lim.shared_per_block} bytes")
    if r.registers is not None and r.registers > lim.max_registers_per_thread:
        r.problems.append(f"{r.registers} registers > {lim.max_registers_per_thread}")
    if r.registers is not None and r.threads:
        occ = occupancy(r.registers, r.shared_bytes or 0, r.threads, r.arch)
        r.blocks_per_sm, r.occupancy, r.occupancy_limiter = occ["blocks_per_sm"], occ["occupancy"], occ["limiter"]
        if occ["blocks_per_sm"] == 0:
            r.problems.append(f"no block of {r.threads} threads fits an SM ({occ['limiter']})")
    elif r.registers is not None:
        r.notes.append("block size unknown (no __launch_bounds__): no occupancy")
    if r.loop_mma_equivalents:
        r.issue_per_mma = r.loop_instructions / r.loop_mma_equivalents
        r.shared_bytes_per_mma = r.loop_shared_bytes / r.loop_mma_equivalents
    if r.hmma is not None:
        r.tensor_core_instructions = r.hmma + r.hgmma
        if r.kind == "gemm" and r.tensor_core_instructions == 0:
            r.problems.append("GEMM-like kernel without tensor-core instructions (no HMMA/HGMMA in the SASS)")
        if r.kind == "memory" and r.global_loads_128 == 0 and r.global_stores_128 == 0:
            r.notes.append("no 128-bit global loads or stores")
    if r.source == "cuda" and r.kind in ("gemm", "gemm-fp32"):
        r.notes.append("smem: static only (dynamic shared memory is the launcher's choice)")
    return r


# -- ptxas's report --------------------------------------------------------------------------------

class PtxasEntry(NamedTuple):
    name: str  # mangled
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int  # static


_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
_PROPERTIES_FOR = re.compile(r"Function properties for (?P<name>\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> list[PtxasEntry]:
    """Kernel entries from `ptxas -v` output, which reads, per kernel:
        Compiling entry function '<mangled>' for 'sm_80'
        Function properties for <mangled>
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        Used 40 registers, used 1 barriers, 128 bytes smem, 448 bytes cmem[0]
    followed by "Function properties" blocks of non-inlined device functions, skipped."""
    found: list[dict] = []
    properties_for = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            found.append({"name": m["name"], "arch": m["arch"]})
            properties_for = None
        elif m := _PROPERTIES_FOR.search(line):
            properties_for = m["name"]
        elif found and properties_for == found[-1]["name"]:
            if m := _FRAME.search(line):
                found[-1]["stack_bytes"], found[-1]["spill_stores"], found[-1]["spill_loads"] = map(int, m.groups())
            elif m := _USED.search(line):
                smem = _SMEM.search(line)
                found[-1]["registers"], found[-1]["shared_bytes"] = int(m[1]), int(smem[1]) if smem else 0
    try:
        return [PtxasEntry(**entry) for entry in found]
    except TypeError as e:
        # A ptxas whose wording changed must not make the check pass vacuously.
        raise RuntimeError(f"could not read ptxas's report ({e}):\n{log}") from e


def demangle(names: list[str]) -> list[str]:
    """`void ns::kernel<float, 8>(ns::Args<float>)` -> `ns::kernel<float, 8>`."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None or not names:  # mangled names are unreadable but the checks still hold
        return names
    return [_strip_signature(n) for n in _run([cxxfilt], "c++filt", stdin="\n".join(names)).splitlines()]


def _strip_signature(name: str) -> str:
    name = name.removeprefix("void ")
    if not name.endswith(")"):
        return name  # extern "C" kernels, left unmangled
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i]
    return name


def from_ptxas(log: str, file: str = "") -> list[KernelResources]:
    """A row per kernel and arch of an `nvcc -Xptxas -v` log (ptxas's figures only: no SASS, no
    block size), with the problems those figures show."""
    entries = parse_ptxas(log)
    return [finish(KernelResources("cuda", file, name, e.arch, kernel_kind(name), e.registers, e.spill_stores,
                                   e.spill_loads, e.stack_bytes, e.shared_bytes))
            for name, e in zip(demangle([e.name for e in entries]), entries)]


# -- tools, processes, cache -----------------------------------------------------------------------

def find_tool(name: str) -> str:
    """A CUDA binary (nvcc, cuobjdump, fatbinary): $CUDA_HOME/bin, /usr/local/cuda/bin, PATH, then
    the copies Triton's wheel ships (cuobjdump, ptxas)."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / name] if os.environ.get("CUDA_HOME") else []
    candidates.append(Path("/usr/local/cuda/bin") / name)
    if on_path := shutil.which(name):
        candidates.append(Path(on_path))
    import triton

    candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(f"{name} not found in $CUDA_HOME/bin, /usr/local/cuda/bin, on PATH or in Triton's wheel "
                       f"(looked at {', '.join(map(str, candidates))}): the kernel report needs a CUDA toolkit "
                       "(set CUDA_HOME)")


def _run(cmd: list[str], what: str, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n$ {shlex.join(cmd)}\n{proc.stderr}{proc.stdout}")
    # nvcc and ptxas write their -v report to stderr.
    return proc.stderr + proc.stdout


@functools.cache
def _version(tool: str) -> str:
    """A tool's identity for cache keys: its path and what `--version` says."""
    return f"{tool}: {_run([tool, '--version'], f'{tool} --version')}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("NANOGPT_KERNELS_TOOLS_CACHE") or Path.home() / ".cache" / "nanogpt_kernels" / "tools")


# Bump when what an entry holds, or how it is measured from the compiler's output, changes.
_CACHE_FORMAT = 3


class _Cache:
    """Measurements on disk, one JSON file per key."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder or default_cache_dir())

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(repr((_CACHE_FORMAT, *parts)).encode()).hexdigest()

    def get(self, key: str):
        try:
            return json.loads((self.folder / key[:2] / f"{key}.json").read_text())
        except (OSError, ValueError):  # absent, or torn by a crash: compile again
            return None

    def put(self, key: str, value) -> None:
        path = self.folder / key[:2] / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Another run may read the same key: it sees the whole entry or none.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(value, f)
        os.replace(f.name, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_lines(text: str, n: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:n])[:1000]


def _check_archs(archs) -> None:
    unknown = [a for a in archs if a not in ARCH_LIMITS]
    if unknown:
        raise ValueError(f"no limits known for {unknown}; known: {sorted(ARCH_LIMITS)}")


# -- CUDA ------------------------------------------------------------------------------------------

def _headers_digest(folder: Path) -> str:
    """Every header a source in `folder` can include from there under nvcc (csrc/*.h, *.cuh, ...).
    The CPU harness's folder is left out: its headers are included only where __CUDACC__ is not
    defined, so they never change what nvcc compiles (and change often)."""
    headers = sorted(p for p in folder.rglob("*") if p.suffix in (".h", ".cuh", ".hpp", ".inc") and p.is_file()
                     and p.relative_to(folder).parts[0] != "harness")
    return hashlib.sha256(repr([(str(p.relative_to(folder)), _sha256(p)) for p in headers]).encode()).hexdigest()


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def cuda_resources(archs: Sequence[str] = ("sm_80", "sm_90a"), sources: Sequence[str | os.PathLike] | None = None,
                   jobs: int | None = None, cache_dir: str | os.PathLike | None = None) -> list[KernelResources]:
    """Every kernel of each CUDA source (default: every csrc/*.cu), per arch. A source that does
    not compile is one row per arch whose problem is nvcc's error. `cache_dir`: default
    default_cache_dir(); a compile is reused while its inputs are unchanged."""
    _check_archs(archs)
    paths = sorted(CSRC.glob("*.cu")) if sources is None else [Path(s) for s in sources]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"CUDA sources not found: {missing}")
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    cache = _Cache(cache_dir)
    flags = [*NVCC_FLAGS, *gencode_flags([_gencode_arch(a) for a in archs]), "--threads", str(len(archs)),
             "-Xptxas", "-v"]
    tools = (_version(nvcc), _version(cuobjdump), shutil.which("c++filt"))
    keys = {p: cache.key("cuda", _sha256(p), _headers_digest(p.parent), flags, tuple(archs), tools) for p in paths}
    measured = {p: cache.get(keys[p]) for p in paths}
    todo = [p for p in paths if measured[p] is None]
    if len(todo) < len(paths):
        print(f"cuda: {len(paths) - len(todo)} of {len(paths)} sources unchanged, from the cache", file=sys.stderr)
    done = itertools.count(1)  # sources compiled so far, for the progress lines

    def compile_and_measure(path: Path) -> list[dict]:
        with tempfile.TemporaryDirectory() as tmp:
            # The source's own folder (csrc/ for ours) is what `-I csrc` gives the real build.
            log = _run([nvcc, "-fatbin", *flags, "-I", str(path.parent), str(path), "-o", str(Path(tmp) / "out.fatbin"),
                        "-keep", "-keep-dir", tmp], f"nvcc on {path}")
            entries = parse_ptxas(log)
            per_arch = {}
            for arch in archs:
                stem = f"{tmp}/{path.stem}.compute_{arch.removeprefix('sm_')}"  # what -keep names them
                sass = _run([cuobjdump, "-sass", f"{stem}.cubin"], f"cuobjdump on {path.name}")
                per_arch[arch] = sass_counts(sass), ptx_block_sizes(Path(f"{stem}.ptx").read_text())
        kernels = []
        for name, e in zip(demangle([e.name for e in entries]), entries):
            counts, threads = per_arch[e.arch]
            m = {"name": name, "arch": e.arch, "registers": e.registers, "spill_stores": e.spill_stores,
                 "spill_loads": e.spill_loads, "stack_bytes": e.stack_bytes, "shared_bytes": e.shared_bytes,
                 "threads": threads.get(e.name), "notes": []}
            if e.name in counts:
                m.update(counts[e.name])
            else:
                m["notes"].append("not found in the SASS")
            kernels.append(m)
        return kernels

    def one(path: Path) -> list[KernelResources]:
        if measured[path] is None:
            try:
                measured[path] = compile_and_measure(path)
            except Exception as e:
                return _failed("cuda", _relative(path), archs, e)
            cache.put(keys[path], measured[path])
            progress(next(done), len(todo), f"nvcc {_relative(path)} ({', '.join(archs)})")
        return sorted((_row("cuda", _relative(path), m) for m in measured[path]), key=lambda r: (r.name, r.arch))

    with ThreadPoolExecutor(max(1, min(jobs or os.cpu_count() or 1, len(paths)))) as pool:
        return [r for rows in pool.map(one, paths) for r in rows]


def _failed(source: str, file: str, archs, error: Exception) -> list[KernelResources]:
    """A row per arch for a source or module that could not be compiled or read, the error its problem."""
    return [finish(KernelResources(source, file, f"{Path(file).name} (failed)", arch, "other",
                                   problems=[_first_lines(str(error))])) for arch in archs]


def _row(source: str, file: str, measured: dict) -> KernelResources:
    """The finished row of a compile's measurements (which it leaves as they are)."""
    return finish(KernelResources(source, file, kind=kernel_kind(measured["name"]),
                                  **{**measured, "notes": list(measured["notes"])}))


def _gencode_arch(arch: str) -> str:
    """"sm_90a" -> "9.0a", the spelling of DEFAULT_CUDA_ARCHS and gencode_flags."""
    m = re.fullmatch(r"sm_(\d+)(\d)(a?)", arch)
    return f"{m[1]}.{m[2]}{m[3]}"


# -- Triton ----------------------------------------------------------------------------------------

def triton_modules() -> list[ModuleType]:
    """Every nanogpt_kernels.triton module with compile_configs()."""
    import importlib
    import pkgutil

    import nanogpt_kernels.triton as package

    modules = [importlib.import_module(f"{package.__name__}.{info.name}")
               for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")]
    return [m for m in modules if hasattr(m, "compile_configs")]


def _triton_ptxas_options(metadata) -> list[str]:
    # The options Triton's own make_cubin passes (triton 3.8), so that registers and spills
    # are those of the cubin Triton would load.
    options = ["-v", "-lineinfo", "--regAllocOptLevel=2"]
    if not metadata.enable_fp_fusion:
        options.append("--fmad=false")
    if metadata.ptx_options:
        options += metadata.ptx_options.split()
    return options


_BATCH = 96  # cubins per fatbinary + cuobjdump run: one process pair instead of one cuobjdump per cubin


def triton_resources(ccs: Sequence[int] = (80, 90), modules: Sequence[ModuleType] | None = None,
                     jobs: int | None = None, cache_dir: str | os.PathLike | None = None) -> list[KernelResources]:
    """Every configuration of each Triton module (default: triton_modules()), per arch (cc 90
    builds sm_90a, as Triton does). A module whose configs cannot be derived or compiled is one
    row per arch with the error as its problem. `cache_dir` as in cuda_resources."""
    import triton
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    from tools.triton_configs import compile_config, derive_configs

    archs = {c: sm_arch_from_capability(c) for c in ccs}
    _check_archs(archs.values())
    cache = _Cache(cache_dir)
    cuobjdump = find_tool("cuobjdump")
    tools = (triton.__version__, _version(cuobjdump), *(_version(get_ptxas(c).path) for c in ccs))
    numbers = itertools.count()  # names the temporary files
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, jobs or os.cpu_count() or 1)) as pool:
        def inspect(batch) -> list[dict]:
            """The measurements of a batch of (name, cc, compiled kernel), disassembled together."""
            batch = [(name, c, kernel, next(numbers)) for name, c, kernel in batch]
            dumps = _dump_cubins(tmp, [(archs[c], kernel.asm["cubin"], n) for _, c, kernel, n in batch], cuobjdump)
            measured = []
            for (name, c, kernel, n), dump in zip(batch, dumps):
                usage, counts = resource_usage(dump), sass_counts(dump)
                if set(usage) != {kernel.name} or set(counts) != {kernel.name}:
                    raise RuntimeError(f"expected the one kernel {kernel.name} in the cubin of {name}, "
                                       f"found {list(usage)}")
                registers, local, _ = usage[kernel.name]
                m = {"arch": archs[c], "registers": registers, "spill_stores": 0, "spill_loads": 0,
                     "stack_bytes": local, "threads": kernel.metadata.num_warps * 32, "notes": [],
                     # Triton allocates all its shared memory dynamically: the cubin shows none of it.
                     "shared_bytes": kernel.metadata.shared, **counts[kernel.name]}
                if local:  # a stack frame: ask ptxas how much of it is spills
                    ptx = Path(tmp) / f"{n}.ptx"
                    ptx.write_text(kernel.asm["ptx"])
                    (e,) = parse_ptxas(_run([get_ptxas(c).path, *_triton_ptxas_options(kernel.metadata),
                                             f"--gpu-name={archs[c]}", str(ptx), "-o", os.devnull], f"ptxas on {name}"))
                    m.update(spill_stores=e.spill_stores, spill_loads=e.spill_loads, stack_bytes=e.stack_bytes)
                measured.append(m)
            return measured

        # Derived first (a fraction of a second per module), so that progress counts every compile.
        derived = {}  # module name: [(config name, cc, cache key, config)], or why it has none
        for module in modules or triton_modules():
            try:
                derived[module.__name__] = [
                    (config["name"], c, cache.key("triton", config["fn"].cache_key, config["signature"],
                                                  config["constexprs"], config["attrs"], config["options"], c, tools),
                     config)
                    for c in ccs for config in derive_configs(module, c)]
            except Exception as e:
                derived[module.__name__] = e
        measured = {key: cache.get(key) for configs in derived.values() if isinstance(configs, list)
                    for _, _, key, _ in configs}
        total = sum(m is None for m in measured.values())
        if total < len(measured):
            print(f"triton: {len(measured) - total} of {len(measured)} configs unchanged, from the cache",
                  file=sys.stderr)
        step = itertools.count(1)
        for file, configs in derived.items():
            if isinstance(configs, Exception):
                rows += _failed("triton", file, archs.values(), configs)
                continue
            try:
                todo = [entry for entry in configs if measured[entry[2]] is None]
                pending, batch = [], []
                for i, (name, c, key, config) in enumerate(todo, 1):
                    progress(next(step), total, f"triton.compile {name} for {archs[c]}")
                    try:
                        batch.append((key, (name, c, compile_config(config, c))))
                    except Exception as e:
                        raise RuntimeError(f"triton.compile failed for {name} on {archs[c]}: "
                                           f"{_first_lines(str(e))}") from e
                    if len(batch) == _BATCH or i == len(todo):
                        # cuobjdump runs in the pool while the next triton.compile holds this thread.
                        keys, compiled = zip(*batch)
                        pending.append((keys, pool.submit(inspect, compiled)))
                        batch = []
                for keys, future in pending:
                    for key, m in zip(keys, future.result()):
                        measured[key] = m
                        cache.put(key, m)
                rows += [_row("triton", file, {"name": name, **measured[key]}) for name, _, key, _ in configs]
            except Exception as e:
                rows += _failed("triton", file, archs.values(), e)
    return rows


def _dump_cubins(tmp: str, cubins, cuobjdump: str) -> list[str]:
    """`cuobjdump -res-usage -sass` output of each (arch, cubin bytes, n), in order: the cubins are
    packed into one fatbin (CUDA's fatbinary keeps their order), dumped once, and split at each
    ELF's header; without fatbinary, one cuobjdump per cubin."""
    paths = []
    for arch, data, n in cubins:
        path = Path(tmp) / f"{n}.cubin"
        path.write_bytes(data)
        paths.append((arch, path))
    try:
        fatbinary = find_tool("fatbinary")
    except RuntimeError:
        fatbinary = None
    if fatbinary is None or len(paths) == 1:
        return [_run([cuobjdump, "-res-usage", "-sass", str(p)], f"cuobjdump on {p.name}") for _, p in paths]
    fatbin = Path(tmp) / f"{cubins[0][2]}.fatbin"
    _run([fatbinary, f"--create={fatbin}", *(f"--image3=kind=elf,sm={arch.removeprefix('sm_')},file={p}"
                                             for arch, p in paths)], "fatbinary")
    dump = _run([cuobjdump, "-res-usage", "-sass", str(fatbin)], f"cuobjdump on {fatbin.name}")
    sections = dump.split("Fatbin elf code:")[1:]
    if len(sections) != len(paths):
        raise RuntimeError(f"cuobjdump listed {len(sections)} ELF images of the {len(paths)} packed")
    return sections


# -- output ----------------------------------------------------------------------------------------

def format_table(rows: Sequence[KernelResources]) -> str:
    header = ("source", "arch", "kernel", "kind", "regs", "spill st/ld", "stack", "smem", "threads", "occupancy",
              "tensor cores", "128-bit ld/st", "issue/HMMA", "smem B/HMMA", "problems")
    numeric = {4, 5, 6, 7, 8, 9, 10, 11, 12, 13}

    def occ(r):
        if r.occupancy is None:
            return "-"
        return f"{100 * r.occupancy:.0f}%" + ("" if r.occupancy_limiter == "none" else f" ({r.occupancy_limiter})")

    def tc(r):
        if r.hmma is None or r.kind not in ("gemm", "gemm-fp32"):
            return "-"
        return f"{r.hmma} HMMA" if not r.hgmma else f"{r.hgmma} HGMMA" + (f" +{r.hmma} HMMA" if r.hmma else "")

    def wide(r):
        return "-" if r.global_loads is None else \
            f"{r.global_loads_128}/{r.global_loads} {r.global_stores_128}/{r.global_stores}"

    def text(v):
        return "-" if v is None else str(v)

    def per_mma(v):
        return "-" if v is None else f"{v:.1f}"

    table = [(r.source, r.arch, r.name, r.kind, text(r.registers),
              "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}", text(r.stack_bytes),
              text(r.shared_bytes), text(r.threads), occ(r), tc(r), wide(r), per_mma(r.issue_per_mma),
              per_mma(r.shared_bytes_per_mma), "; ".join(r.problems) or "ok")
             for r in rows]
    widths = [max(len(row[i]) for row in (header, *table)) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, table)])


def summary(rows: Sequence[KernelResources]) -> str:
    """A few lines: counts per kind and arch, what has problems."""
    lines = []
    for arch in dict.fromkeys(r.arch for r in rows):
        at = [r for r in rows if r.arch == arch]
        gemm = [r for r in at if r.kind == "gemm"]
        mem = [r for r in at if r.kind == "memory"]
        occ = [r.occupancy for r in at if r.occupancy is not None]
        lines.append(f"{arch}: {len(at)} kernels; {sum(bool(r.tensor_core_instructions) for r in gemm)}/{len(gemm)} "
                     f"GEMM-like with tensor cores; {sum(bool(r.global_loads_128 or r.global_stores_128) for r in mem)}"
                     f"/{len(mem)} memory-bound with 128-bit accesses; occupancy "
                     + (f"{100 * min(occ):.0f}%..{100 * max(occ):.0f}%" if occ else "-"))
    bad = [r for r in rows if r.problems]
    lines.append(f"{len(bad)} kernel(s) with problems" if bad else "no problems")
    return "\n".join(lines)


def report(archs=("sm_80", "sm_90a"), sources=None, modules=None, cuda=True, triton=True) -> list[KernelResources]:
    rows = []
    if cuda:
        rows += cuda_resources(archs, sources)
    if triton:
        rows += triton_resources(tuple(int(a[3:5]) for a in archs), modules)
    return rows


def to_json(rows: Sequence[KernelResources]) -> dict:
    return {"columns": list(COLUMNS), "arch_limits": {a: lim._asdict() for a, lim in ARCH_LIMITS.items()},
            "kernels": [asdict(r) for r in rows]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools kernels", description=__doc__.split("\n\n")[0],
        epilog=f"Compiles are cached in {default_cache_dir()} ($NANOGPT_KERNELS_TOOLS_CACHE), keyed by a hash of "
               "the sources, headers, flags, compilers and configuration: a run compiles only what changed "
               "(the first takes minutes).")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON here")
    p.add_argument("--no-cuda", action="store_true", help="leave out the CUDA kernels")
    p.add_argument("--no-triton", action="store_true", help="leave out the Triton kernels")
    p.add_argument("--problems-only", action="store_true", help="print only the rows with problems")
    p.add_argument("--budgets", default=str(budgets.DEFAULT_PATH), metavar="PATH",
                   help="the budget file every tensor-core main loop is checked against (tools/budgets.py; "
                        "default: %(default)s); a figure over its budget fails the run")
    p.add_argument("--record-budgets", action="store_true",
                   help="write the budget file afresh from this run's figures (each kernel's baseline and budget)")
    args = p.parse_args(argv)
    rows = report(cuda=not args.no_cuda, triton=not args.no_triton)
    shown = [r for r in rows if r.problems] if args.problems_only else rows
    print(format_table(shown))
    print()
    print(summary(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(to_json(rows), f, indent=1)
    if args.record_budgets:
        previous = budgets.load(args.budgets) if Path(args.budgets).exists() else None
        budgets.write(budgets.record(rows, time.strftime("%Y-%m-%d"), previous), args.budgets)
        print(f"budgets recorded in {args.budgets}")
    over = budgets.check(rows, budgets.load(args.budgets))
    if over:
        print(f"\n{len(over)} budget(s) exceeded ({args.budgets}):\n" + "\n".join(over))
    else:
        missing = sum(bool(e["misses"]) for e in budgets.load(args.budgets)["kernels"].values())
        print(f"budgets: every tensor-core main loop within its budget; {missing} still miss the targets "
              f"{budgets.TARGETS}")
    return 1 if over or any(r.problems for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
