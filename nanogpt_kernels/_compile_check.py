"""Ahead-of-time resource check of every kernel, for sm_80 and sm_90a, with no GPU.

Compiles each `csrc/*.cu` with the real build's nvcc flags and each Triton configuration that
a `nanogpt_kernels.triton.<op>.compile_configs()` lists, reads ptxas's per-kernel report and
flags what makes a kernel slow or unlaunchable on the target: any register spill, more
shared memory than one block may have, more than 255 registers.

    python -m nanogpt_kernels._compile_check    # prints the table; exit status 1 on problems

What this cannot see:
- dynamic shared memory of CUDA kernels (`extern __shared__`): its size is the launcher's
  run-time choice, so the CUDA shared-memory figure is the static part ptxas reports;
- a dynamically indexed local array: it lives in local memory by design, so ptxas reports it
  as stack frame (`stack_bytes`), not as a spill, and it is not flagged;
- non-inlined `__device__` functions: reports are per kernel entry point.

A Triton config compiles what its `signature`, `constexprs` and optional `attrs` describe.
The launcher's run-time specialisation is not implied: without
`"attrs": {(i,): [["tt.divisibility", 16]]}` for argument i, Triton assumes nothing about
alignment, so loads stay scalar and `num_stages` pipelining (cp.async) is skipped, and the
kernel checked is not the one launched on 16-byte aligned torch tensors.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterable, NamedTuple, Sequence

from ._build_flags import NVCC_FLAGS, gencode_flags

# Shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin):
# A100 163 KB, H100 227 KB. An arch missing here cannot be checked, so it is refused.
SHARED_LIMITS = {"sm_80": 166912, "sm_90a": 232448}
MAX_REGISTERS = 255

_CONFIG_KEYS = ("name", "fn", "signature", "constexprs", "options")


@dataclass
class KernelReport:
    """ptxas's resource report for one kernel (one template instantiation or one Triton
    config) on one arch, with the problems the check found (empty when it is fine)."""

    source: str  # "cuda" or "triton"
    name: str  # demangled kernel name without its parameter list, or the Triton config name
    arch: str  # "sm_80" or "sm_90a"
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack_bytes: int
    shared_bytes: int  # static shared memory (CUDA) or metadata.shared (Triton)
    problems: list[str] = field(default_factory=list)


class _PtxasEntry(NamedTuple):
    name: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int


def cuda_reports(archs: Sequence[str] = ("sm_80", "sm_90a"),
                 sources: Sequence[str | os.PathLike] | None = None) -> list[KernelReport]:
    """Compile each CUDA source (default: every `csrc/*.cu` of the source checkout) for
    `archs` and report every kernel instantiation it contains, per arch.

    Raises RuntimeError with nvcc's output when a compile fails, or when nvcc is missing."""
    _check_archs(archs)
    paths = sorted(_csrc_dir().glob("*.cu")) if sources is None else [Path(s) for s in sources]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"CUDA sources not found: {missing}")
    nvcc = find_nvcc()
    flags = [*NVCC_FLAGS, *gencode_flags([_gencode_arch(a) for a in archs]), "-Xptxas", "-v"]

    def compile_one(path: Path) -> str:
        # The source's own folder (csrc/ for ours) is what `-I csrc` gives the real build.
        return _run([nvcc, "-c", *flags, "-I", str(path.parent), str(path), "-o", os.devnull],
                    f"nvcc on {path}")

    # nvcc is a subprocess, so two threads keep both cores of a small CI machine busy.
    with ThreadPoolExecutor(2) as pool:
        logs = list(pool.map(compile_one, paths))
    reports = []
    for log in logs:
        entries = _parse_ptxas(log)
        names = _demangle([e.name for e in entries])
        reports += sorted((_report("cuda", name, e) for name, e in zip(names, entries)),
                          key=lambda r: (r.name, r.arch))
    return reports


def triton_reports(ccs: Sequence[int] = (80, 90),
                   modules: Sequence[ModuleType] | None = None) -> list[KernelReport]:
    """Compile every config that each module's `compile_configs()` lists (default: every
    public module of `nanogpt_kernels.triton`) for each compute capability in `ccs`, and
    report it per arch (cc 90 builds sm_90a, as Triton does).

    Raises RuntimeError with the compiler's message when triton.compile or ptxas fails."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    archs = {cc: sm_arch_from_capability(cc) for cc in ccs}
    _check_archs(archs.values())
    configs = _triton_configs(_triton_modules() if modules is None else modules)

    jobs = []
    # ptxas runs in the pool while the next triton.compile holds this thread.
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        for config in configs:
            for cc, arch in archs.items():
                try:
                    kernel = triton.compile(
                        ASTSource(fn=config["fn"], signature=config["signature"],
                                  constexprs=config["constexprs"], attrs=config.get("attrs")),
                        target=GPUTarget("cuda", cc, 32), options=config["options"])
                except Exception as e:
                    raise RuntimeError(f"triton.compile failed for {config['name']} on {arch}:\n{e}") from e
                ptx = Path(tmp) / f"{len(jobs)}.ptx"
                ptx.write_text(kernel.asm["ptx"])
                cmd = [get_ptxas(cc).path, *_triton_ptxas_options(kernel.metadata), f"--gpu-name={arch}",
                       str(ptx), "-o", os.devnull]
                log = pool.submit(_run, cmd, f"ptxas on {config['name']} for {arch}")
                jobs.append((config["name"], kernel.metadata.shared, log))
        reports = []
        for name, shared, log in jobs:
            entries = _parse_ptxas(log.result())
            if len(entries) != 1:
                raise RuntimeError(f"expected one kernel in the PTX of {name}, ptxas reported "
                                   f"{[e.name for e in entries]}")
            # Triton allocates all its shared memory dynamically: ptxas sees none of it.
            reports.append(_report("triton", name, entries[0]._replace(shared_bytes=shared)))
    return reports


def format_table(reports: Sequence[KernelReport]) -> str:
    """An aligned text table, one row per kernel and arch; sizes in bytes."""
    header = ("source", "arch", "kernel", "regs", "spill st", "spill ld", "stack", "smem", "problems")
    rows = [(r.source, r.arch, r.name, str(r.registers), str(r.spill_stores), str(r.spill_loads),
             str(r.stack_bytes), str(r.shared_bytes), "; ".join(r.problems) or "ok") for r in reports]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    numeric = range(3, 8)

    def line(row):
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def _report(source: str, name: str, e: _PtxasEntry) -> KernelReport:
    problems = []
    if e.spill_stores or e.spill_loads:
        problems.append(f"spills {e.spill_stores} bytes stored, {e.spill_loads} bytes loaded")
    limit = SHARED_LIMITS[e.arch]
    if e.shared_bytes > limit:
        problems.append(f"shared memory {e.shared_bytes} bytes > {e.arch} limit {limit} bytes")
    if e.registers > MAX_REGISTERS:
        problems.append(f"{e.registers} registers > {MAX_REGISTERS}")
    return KernelReport(source, name, e.arch, e.registers, e.spill_stores, e.spill_loads,
                        e.stack_bytes, e.shared_bytes, problems)


_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
_PROPERTIES_FOR = re.compile(r"Function properties for (?P<name>\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def _parse_ptxas(log: str) -> list[_PtxasEntry]:
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
        return [_PtxasEntry(**entry) for entry in found]
    except TypeError as e:
        # A ptxas whose wording changed must not make the check pass vacuously.
        raise RuntimeError(f"could not read ptxas's report ({e}):\n{log}") from e


def _demangle(names: list[str]) -> list[str]:
    """`void ns::kernel<float, 8>(ns::Args<float>)` -> `ns::kernel<float, 8>`."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None or not names:  # mangled names are unreadable but the check still holds
        return names
    demangled = _run([cxxfilt], "c++filt", stdin="\n".join(names)).splitlines()
    return [_strip_signature(n) for n in demangled]


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


def _run(cmd: list[str], what: str, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n$ {shlex.join(cmd)}\n{proc.stderr}{proc.stdout}")
    # nvcc and ptxas write their -v report to stderr.
    return proc.stderr + proc.stdout


def _check_archs(archs: Iterable[str]) -> None:
    unknown = [a for a in archs if a not in SHARED_LIMITS]
    if unknown:
        raise ValueError(f"no shared-memory limit known for {unknown}; known: {sorted(SHARED_LIMITS)}")


def _gencode_arch(arch: str) -> str:
    """"sm_90a" -> "9.0a", the spelling of DEFAULT_CUDA_ARCHS and gencode_flags."""
    m = re.fullmatch(r"sm_(\d+)(\d)(a?)", arch)
    return f"{m[1]}.{m[2]}{m[3]}"


def find_nvcc() -> str:
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    if on_path := shutil.which("nvcc"):
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("nvcc not found in $CUDA_HOME/bin, /usr/local/cuda/bin or on PATH: the CUDA "
                       "compile check needs a CUDA toolkit (set CUDA_HOME)")


def _csrc_dir() -> Path:
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    if not csrc.is_dir():
        raise RuntimeError(f"{csrc} does not exist: the CUDA compile check needs the source checkout "
                           "(an editable install, `pip install -e .`), not an installed wheel")
    return csrc


def _triton_modules() -> list[ModuleType]:
    package = importlib.import_module(".triton", __package__)
    return [importlib.import_module(f"{package.__name__}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")]


def _triton_configs(modules: Sequence[ModuleType]) -> list[dict]:
    configs = []
    for module in modules:
        if not hasattr(module, "compile_configs"):
            continue  # modules without kernels of their own (helpers) define none
        for config in module.compile_configs():
            missing = [k for k in _CONFIG_KEYS if k not in config]
            if missing:
                raise ValueError(f"{module.__name__}.compile_configs(): config "
                                 f"{config.get('name', '?')!r} lacks {missing}")
            configs.append(config)
    return configs


def _triton_ptxas_options(metadata) -> list[str]:
    # The options Triton's own make_cubin passes (triton 3.8), so that registers and spills
    # are those of the cubin Triton would load.
    options = ["-v", "-lineinfo", "--regAllocOptLevel=2"]
    if not metadata.enable_fp_fusion:
        options.append("--fmad=false")
    if metadata.ptx_options:
        options += metadata.ptx_options.split()
    return options


if __name__ == "__main__":
    all_reports = cuda_reports() + triton_reports()
    print(format_table(all_reports))
    raise SystemExit(1 if any(r.problems for r in all_reports) else 0)
