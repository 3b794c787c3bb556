"""Kernel resource report: `python -m nanogpt_kernels kernels [--json PATH]`. No GPU needed.

Builds on the compile check (`nanogpt_kernels._compile_check`): every `csrc/*.cu` kernel and
every Triton configuration that a `nanogpt_kernels.triton.<op>.compile_configs()` lists is
compiled for sm_80 (A100) and sm_90a (H100), and for each kernel and arch the report gives

    regs, spills, stack, smem   ptxas's figures (as the compile check reads them)
    threads                     the block size: `.maxntid` in the PTX (`__launch_bounds__`) for
                                CUDA kernels, num_warps x 32 for Triton
    occupancy                   theoretical occupancy (resident warps / 64) from registers, shared
                                memory and block size against the arch's per-SM limits, and what
                                limits it (the CUDA occupancy calculator's arithmetic)
    tensor cores                HMMA (mma.sync) + HGMMA (wgmma) instructions in the SASS
    128-bit ld/st               LDG/LDGSTS/STG instructions with a .128 width in the SASS

SASS comes from `cuobjdump -sass` (Triton's wheel ships it) on the cubins compiled here: one
`nvcc -fatbin -keep` per `csrc/*.cu` (the real build's flags), `kernel.asm["cubin"]` for Triton.

Kernels are classified by name (so name them accordingly):
    gemm       matrix-product kernels: names with attn/attention, gemm, matmul or mlp, except the
               row-wise helpers below; they must use tensor cores
    gemm-fp32  the same in float32 (names with f32/fp32 or a `float` template argument): FMA by
               design, tensor cores optional
    memory     memory-bound kernels (layernorm / layer_norm, normal_init): 128-bit accesses expected
    other      the rest (reductions, attention's backward preprocess, column sums)

Problems (exit status 1): any spill, shared memory above the per-block limit, more than 255
registers (the compile check's), a kernel that cannot fit one block on an SM, a `gemm` kernel
without tensor-core instructions, and a source that does not compile (or whose report cannot be read). A `memory` kernel without
128-bit accesses is a note, not a problem (a reduction over a few values need not vectorise).

What it cannot see: the dynamic shared memory of CUDA kernels (`extern __shared__`, the
launcher's run-time choice): their smem and occupancy count the static part only; CUDA kernels
without `__launch_bounds__` have no block size in their PTX, so no occupancy.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from . import _compile_check as cc
from ._build_flags import NVCC_FLAGS, gencode_flags


class ArchLimits(NamedTuple):
    """Per-SM limits of one architecture (CUDA C Programming Guide, compute capabilities table,
    and the CUDA occupancy calculator's allocation granularities)."""
    max_warps: int = 64  # resident warps per SM (2048 threads)
    max_blocks: int = 32  # resident blocks per SM
    registers: int = 65536  # 32-bit registers per SM
    register_unit: int = 256  # registers are allocated per warp in units of 256
    warp_granularity: int = 4  # ... for groups of 4 warps (one per SM sub-partition)
    max_registers_per_thread: int = 255
    shared_per_sm: int = 167936  # bytes of shared memory per SM at the largest carve-out
    shared_per_block: int = 166912  # bytes one block may opt into
    shared_reserved: int = 1024  # bytes the system reserves per resident block (CUDA 11+)
    shared_unit: int = 128  # shared memory allocation granularity


ARCH_LIMITS = {
    "sm_80": ArchLimits(),  # A100: 164 KB shared per SM, 163 KB per block
    "sm_90a": ArchLimits(shared_per_sm=233472, shared_per_block=232448),  # H100: 228 KB per SM, 227 KB per block
}

KINDS = ("gemm", "gemm-fp32", "memory", "other")
_GEMM_LIKE = re.compile(r"attn|attention|gemm|matmul|mlp", re.IGNORECASE)
_NOT_GEMM = re.compile(r"preprocess|delta|reduce|column_?sum|colsum|dbias|bias_grad", re.IGNORECASE)
_FP32 = re.compile(r"f32|fp32|\bfloat\b", re.IGNORECASE)
_MEMORY = re.compile(r"layer_?norm|normal_init", re.IGNORECASE)

# Columns of the JSON rows and of the table, in order.
COLUMNS = ("source", "file", "name", "arch", "kind", "registers", "spill_stores", "spill_loads", "stack_bytes",
           "shared_bytes", "threads", "blocks_per_sm", "occupancy", "occupancy_limiter", "tensor_core_instructions",
           "hmma", "hgmma", "global_loads", "global_loads_128", "global_stores", "global_stores_128", "problems",
           "notes")


@dataclass
class KernelResources:
    source: str  # "cuda" or "triton"
    file: str  # csrc/<op>.cu or the Triton module
    name: str
    arch: str
    kind: str  # one of KINDS
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
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
    limits = {"warps": lim.max_warps // warps if warps <= lim.max_warps and threads <= 1024 else 0,
              "blocks": lim.max_blocks}
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
    global_loads (LDG and LDGSTS), global_loads_128, global_stores (STG), global_stores_128."""
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
    return out


_ENTRY = re.compile(r"\.entry\s+([\w$.]+)\s*\(")
_MAXNTID = re.compile(r"\.(?:maxntid|reqntid)\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?")


def ptx_block_sizes(ptx: str) -> dict[str, int]:
    """{kernel: threads per block} from `.maxntid x, y, z` (or `.reqntid`) of each PTX entry;
    kernels without either (no `__launch_bounds__`) are left out."""
    out = {}
    entries = list(_ENTRY.finditer(ptx))
    for i, m in enumerate(entries):
        end = entries[i + 1].start() if i + 1 < len(entries) else len(ptx)
        header = ptx[m.end():ptx.find("{", m.end(), end) if ptx.find("{", m.end(), end) >= 0 else end]
        if d := _MAXNTID.search(header):
            out[m[1]] = math.prod(int(x) for x in d.groups() if x)
    return out


def finish(r: KernelResources) -> KernelResources:
    """Fill in occupancy and the problems of a report whose ptxas and SASS figures are set."""
    if r.registers is not None and r.threads:
        occ = occupancy(r.registers, r.shared_bytes or 0, r.threads, r.arch)
        r.blocks_per_sm, r.occupancy, r.occupancy_limiter = occ["blocks_per_sm"], occ["occupancy"], occ["limiter"]
        if occ["blocks_per_sm"] == 0:
            r.problems.append(f"no block of {r.threads} threads fits an SM ({occ['limiter']})")
    elif r.registers is not None:
        r.notes.append("block size unknown (no __launch_bounds__): no occupancy")
    if r.hmma is not None:
        r.tensor_core_instructions = r.hmma + r.hgmma
        if r.kind == "gemm" and r.tensor_core_instructions == 0:
            r.problems.append("GEMM-like kernel without tensor-core instructions (no HMMA/HGMMA in the SASS)")
        if r.kind == "memory" and r.global_loads_128 == 0 and r.global_stores_128 == 0:
            r.notes.append("no 128-bit global loads or stores")
    if r.source == "cuda" and r.kind in ("gemm", "gemm-fp32"):
        r.notes.append("smem: static only (dynamic shared memory is the launcher's choice)")
    r.problems = list(dict.fromkeys(r.problems))
    return r


# -- compiling -------------------------------------------------------------------------------------

def cuobjdump() -> str:
    """cuobjdump from the CUDA toolkit, else the one in Triton's wheel."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "cuobjdump"] if os.environ.get("CUDA_HOME") else []
    candidates.append(Path("/usr/local/cuda/bin/cuobjdump"))
    if on_path := shutil.which("cuobjdump"):
        candidates.append(Path(on_path))
    try:
        from triton import knobs
        candidates.append(Path(knobs.nvidia.cuobjdump.path))
    except Exception:
        pass
    try:
        import triton
        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("cuobjdump not found (CUDA toolkit or Triton's wheel): the report needs it for the SASS")


def _sass(cubin: Path) -> dict[str, dict[str, int]]:
    return sass_counts(cc._run([cuobjdump(), "-sass", str(cubin)], f"cuobjdump on {cubin.name}"))


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(cc._csrc_dir().parent))
    except (ValueError, RuntimeError):
        return str(path)


def cuda_resources(archs: Sequence[str] = ("sm_80", "sm_90a"),
                   sources: Sequence[str | os.PathLike] | None = None, jobs: int = 2) -> list[KernelResources]:
    """Every kernel of each CUDA source (default: every csrc/*.cu), per arch. A source that does
    not compile is one row whose problem is nvcc's error."""
    cc._check_archs(archs)
    paths = sorted(cc._csrc_dir().glob("*.cu")) if sources is None else [Path(s) for s in sources]
    nvcc = cc.find_nvcc()

    def one(path: Path) -> list[KernelResources]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [nvcc, "-fatbin", *NVCC_FLAGS, *gencode_flags([cc._gencode_arch(a) for a in archs]),
                   "--threads", str(len(archs)), "-Xptxas", "-v", "-I", str(path.parent), str(path),
                   "-o", str(Path(tmp) / "out.fatbin"), "-keep", "-keep-dir", tmp]
            try:
                log = cc._run(cmd, f"nvcc on {path}")
                entries = cc._parse_ptxas(log)
                per_arch = {}
                for arch in archs:
                    stem = f"{path.stem}.compute_{arch.removeprefix('sm_')}"  # what -keep names them
                    per_arch[arch] = (_sass(Path(tmp) / f"{stem}.cubin"),
                                      ptx_block_sizes((Path(tmp) / f"{stem}.ptx").read_text()))
            except Exception as e:
                return [finish(KernelResources("cuda", _relative(path), f"{path.name} (failed)", arch, "other",
                                               problems=[_first_lines(str(e))])) for arch in archs]
        names = cc._demangle([e.name for e in entries])
        rows = []
        for name, e in zip(names, entries):
            sass, threads = per_arch[e.arch]
            base = cc._report("cuda", name, e)
            r = KernelResources("cuda", _relative(path), name, e.arch, kernel_kind(name), e.registers, e.spill_stores,
                                e.spill_loads, e.stack_bytes, e.shared_bytes, threads.get(e.name),
                                problems=list(base.problems))
            counts = sass.get(e.name)
            if counts is None:
                r.notes.append("not found in the SASS")
            else:
                for k, v in counts.items():
                    setattr(r, k, v)
            rows.append(finish(r))
        return sorted(rows, key=lambda r: (r.name, r.arch))

    with ThreadPoolExecutor(max(1, min(jobs, len(paths)))) as pool:
        return [r for rows in pool.map(one, paths) for r in rows]


def triton_resources(ccs: Sequence[int] = (80, 90), modules=None, jobs: int = 2) -> list[KernelResources]:
    """Every configuration of each Triton module (default: every nanogpt_kernels.triton module
    with compile_configs()), per arch, from the cubin `triton.compile` builds (a Triton cache hit
    after the compile check): registers and local memory from `cuobjdump -res-usage`, the SASS
    from `cuobjdump -sass`; a kernel with local memory (a stack frame) is run through ptxas -v
    as the compile check does, for its spills. The problem thresholds are the compile check's.
    A module whose configs fail to compile is one row per arch with the error as its problem."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    modules = cc._triton_modules() if modules is None else modules
    archs = {c: sm_arch_from_capability(c) for c in ccs}
    cc._check_archs(archs.values())
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, jobs)) as pool:
        def entry_of(name, c, kernel, usage, n):
            (regs, local, _shared), = usage.values()
            entry = cc._PtxasEntry(name, archs[c], regs, 0, 0, local, kernel.metadata.shared)
            if local:  # a stack frame: ask ptxas how much of it is spills
                ptx = Path(tmp) / f"{n}.ptx"
                ptx.write_text(kernel.asm["ptx"])
                log = cc._run([get_ptxas(c).path, *cc._triton_ptxas_options(kernel.metadata),
                               f"--gpu-name={archs[c]}", str(ptx), "-o", os.devnull], f"ptxas on {name}")
                (e,) = cc._parse_ptxas(log)
                entry = e._replace(name=name, shared_bytes=kernel.metadata.shared)
            return entry

        def inspect(batch):
            """[(entry, sass counts, threads)] of a batch of (name, cc, kernel, n), disassembled together."""
            dumps = _dump_cubins(tmp, [(archs[c], kernel.asm["cubin"], n) for _, c, kernel, n in batch])
            out = []
            for (name, c, kernel, n), dump in zip(batch, dumps):
                usage, counts = resource_usage(dump), sass_counts(dump)
                if len(usage) != 1 or len(counts) != 1 or set(usage) != {kernel.name}:
                    raise RuntimeError(f"expected the one kernel {kernel.name} in the cubin of {name}, found {list(usage)}")
                out.append((entry_of(name, c, kernel, usage, n), next(iter(counts.values())),
                            kernel.metadata.num_warps * 32))
            return out

        for module in modules:
            if not hasattr(module, "compile_configs"):
                continue
            file = module.__name__
            try:
                compiled = []
                for config in cc._triton_configs([module]):
                    for c in ccs:
                        try:
                            kernel = triton.compile(
                                ASTSource(fn=config["fn"], signature=config["signature"],
                                          constexprs=config["constexprs"], attrs=config.get("attrs")),
                                target=GPUTarget("cuda", c, 32), options=config["options"])
                        except Exception as e:
                            raise RuntimeError(f"triton.compile failed for {config['name']} on {archs[c]}: "
                                               f"{_first_lines(str(e))}") from e
                        compiled.append((config["name"], c, kernel, len(compiled)))
                batches = [compiled[i:i + _BATCH] for i in range(0, len(compiled), _BATCH)]
                for results in pool.map(inspect, batches):
                    for entry, counts, threads in results:
                        base = cc._report("triton", entry.name, entry)
                        rows.append(finish(KernelResources(
                            "triton", file, entry.name, entry.arch, kernel_kind(entry.name), entry.registers,
                            entry.spill_stores, entry.spill_loads, entry.stack_bytes, entry.shared_bytes, threads,
                            problems=list(base.problems), **counts)))
            except Exception as e:
                rows += [finish(KernelResources("triton", file, f"{file} (failed)", arch, "other",
                                                problems=[_first_lines(str(e))])) for arch in archs.values()]
    return rows


_BATCH = 96  # cubins per fatbinary + cuobjdump run: one process pair instead of one cuobjdump per cubin


def _dump_cubins(tmp: str, cubins) -> list[str]:
    """`cuobjdump -res-usage -sass` output of each (arch, cubin bytes, n), in order: the cubins are
    packed into one fatbin (CUDA's fatbinary keeps their order), dumped once, and split at each
    ELF's header; without fatbinary, one cuobjdump per cubin."""
    paths = []
    for arch, data, n in cubins:
        path = Path(tmp) / f"{n}.cubin"
        path.write_bytes(data)
        paths.append((arch, path))
    fatbinary = Path(cc.find_nvcc()).parent / "fatbinary"
    if not fatbinary.is_file() or len(paths) == 1:
        return [cc._run([cuobjdump(), "-res-usage", "-sass", str(p)], f"cuobjdump on {p.name}") for _, p in paths]
    fatbin = Path(tmp) / f"{cubins[0][2]}.fatbin"
    cc._run([str(fatbinary), f"--create={fatbin}", *(f"--image3=kind=elf,sm={arch.removeprefix('sm_')},file={p}"
                                                     for arch, p in paths)], "fatbinary")
    dump = cc._run([cuobjdump(), "-res-usage", "-sass", str(fatbin)], f"cuobjdump on {fatbin.name}")
    sections = dump.split("Fatbin elf code:")[1:]
    if len(sections) != len(paths):
        raise RuntimeError(f"cuobjdump listed {len(sections)} ELF images of the {len(paths)} packed")
    return sections


_RESOURCES = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(dump: str) -> dict[str, tuple[int, int, int]]:
    """{function: (registers, local bytes per thread, static shared bytes)} from `cuobjdump -res-usage`."""
    return {m[1]: (int(m[2]), int(m[5]), int(m[4])) for m in _RESOURCES.finditer(dump)}


def _first_lines(text: str, n: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:n])[:1000]


# -- output ----------------------------------------------------------------------------------------

def format_table(rows: Sequence[KernelResources]) -> str:
    header = ("source", "arch", "kernel", "kind", "regs", "spill st/ld", "stack", "smem", "threads", "occupancy",
              "tensor cores", "128-bit ld/st", "problems")
    numeric = {4, 5, 6, 7, 8, 9, 10, 11}

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

    table = [(r.source, r.arch, r.name, r.kind, text(r.registers),
              "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}", text(r.stack_bytes),
              text(r.shared_bytes), text(r.threads), occ(r), tc(r), wide(r), "; ".join(r.problems) or "ok")
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
    p = argparse.ArgumentParser(prog="python -m nanogpt_kernels kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON here")
    p.add_argument("--no-cuda", action="store_true", help="leave out the CUDA kernels")
    p.add_argument("--no-triton", action="store_true", help="leave out the Triton kernels")
    p.add_argument("--problems-only", action="store_true", help="print only the rows with problems")
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
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
