"""What the benchmarks share: the case and provider model, validation before timing, timing,
peak memory, roofline figures and the results file.

A `Case` is one op at one shape: its inputs, the eager reference, and the providers to compare
(a callable with the reference's signature, or a `Skip` saying why it cannot run here).
`measure(case, settings)` validates every provider's outputs and gradients against a float64
run of the reference (the tests' tolerance: within a multiple of eager's own error), then
times forward, backward and forward+backward, and returns one record per provider and mode.
A provider that is missing, raises, or gives wrong results becomes a record with status
"skipped", "error" or "invalid" and a reason; nothing here lets one provider stop the others.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import nanogpt_kernels as nk
from nanogpt_kernels.testing import max_error, tolerance
from .roofline import MODES, measure_peaks, percent_of_roofline

SMOKE_LABEL = "CPU SMOKE RUN: not GPU figures"
# Columns every record has, in CSV order; op-specific shape columns (B, H, T, D, rows, ...) follow.
COLUMNS = ("op", "provider", "mode", "shape", "size", "dtype", "status", "reason", "ms", "timer", "TFLOP/s", "GB/s",
           "roofline_pct", "peak_bytes", "flops", "bytes", "valid", "smoke")


@dataclass(frozen=True)
class Skip:
    """A provider that cannot run here, and why (not installed, GPU only, not this op's math)."""
    reason: str


@dataclass
class Settings:
    device: torch.device
    smoke: bool
    quick: bool = False
    dtype: torch.dtype = torch.bfloat16
    reps_ms: int = 100  # ms of timing per measurement on a GPU (triton.testing.do_bench's rep)
    peaks: Optional[dict] = None  # {"flops", "bandwidth"}: the roofline
    log: Callable[[str], None] = print

    @classmethod
    def detect(cls, *, smoke: bool = False, **kwargs) -> "Settings":
        """A GPU when torch sees one, else (or when `smoke` asks for it) the CPU smoke run."""
        device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        return cls(device=device, smoke=device.type != "cuda", **kwargs)


def script_settings(args, **kwargs) -> Settings:
    """Settings of a standalone benchmark script (its --dtype and --reps), with peaks measured."""
    settings = Settings.detect(dtype=getattr(torch, args.dtype), reps_ms=args.reps, **kwargs)
    settings.peaks = measure_peaks(settings.device)
    return settings


@dataclass
class Case:
    op: str
    shape: dict  # the shape's own columns, e.g. {"B": 12, "H": 12, "T": 1024, "D": 64}
    size: float  # this case's x coordinate in the op's plot
    size_name: str  # the plot's x label
    dtype: torch.dtype
    flops: dict  # per mode
    bytes: dict  # per mode
    metric: str  # "TFLOP/s" (compute-bound ops) or "GB/s" (memory-bound): what summary and plot show
    providers: dict  # name -> callable | Skip
    make_inputs: Optional[Callable] = None  # () -> (leaf inputs, gradients of the outputs); fresh tensors
    reference: Optional[Callable] = None  # eager, same signature as the providers
    input_names: tuple = ()
    output_names: tuple = ()
    modes: tuple = MODES
    series: str = ""  # cases of one op with equal series share a plot line
    plot: bool = True
    # Cases that are no autograd op (init, a training step) bring their own:
    prepare: Optional[Callable] = None  # (case, provider, settings) -> {mode: callable}, validated; or NotMeasured
    timer: Optional[Callable] = None  # (fn, device, reps_ms) -> (seconds, peak bytes, timer); default `timed`
    metrics: Optional[Callable] = None  # (case, record, seconds, settings) -> extra columns of a record
    cleanup: Optional[Callable] = None  # (case, provider) after a provider's timing
    extra: dict = field(default_factory=dict)  # what those need (configs, step counts)
    cache: dict = field(default_factory=dict, repr=False)  # the reference, computed once per case

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.shape.items())


def record(case: Case, provider: str, mode: str, status: str, settings: Settings, reason: str = "", **values) -> dict:
    row = {"op": case.op, "provider": provider, "mode": mode, "shape": case.label, "size": case.size,
           "dtype": str(case.dtype).removeprefix("torch."), "status": status, "reason": reason,
           "ms": None, "timer": None, "TFLOP/s": None, "GB/s": None, "roofline_pct": None, "peak_bytes": None,
           "flops": case.flops.get(mode), "bytes": case.bytes.get(mode), "valid": status == "ok",
           "smoke": settings.smoke, **case.shape, "series": case.series, "size_name": case.size_name,
           "metric": case.metric, "plot": case.plot}
    row.update(values)
    return row


# Below this many seconds per call, the host's launch overhead (~5-20 us per kernel, several
# kernels per op) is a large share of what CUDA events measure around a Python call: such ops
# are timed as a CUDA graph replay, which launches every kernel of the call from the device.
GRAPH_BELOW_S = 100e-6


def timed(fn, device, reps_ms):
    """(median seconds, peak bytes allocated above the baseline during one call, timer) of
    fn(). On a GPU: the median of CUDA-event timings through triton.testing.do_bench (warm-up,
    L2 flushed between runs; do_bench returns the mean unless told), and for calls under
    GRAPH_BELOW_S the median of CUDA graph replays (do_bench_cudagraph; the L2 is not flushed
    between replays) when the call can be captured; `timer` says which. On the CPU (smoke runs)
    one timed call (validation ran it already) and no peak memory."""
    if device.type == "cuda":
        from triton.testing import do_bench, do_bench_cudagraph

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        seconds = do_bench(fn, warmup=25, rep=reps_ms, return_mode="median") * 1e-3
        if seconds >= GRAPH_BELOW_S:
            return seconds, peak, "cuda events"
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                return do_bench_cudagraph(fn, rep=reps_ms, return_mode="median") * 1e-3, peak, "cuda graph"
        except Exception as e:  # not capturable (a host sync, a CPU-side RNG draw): events it is
            return seconds, peak, f"cuda events (graph capture failed: {short(e)})"
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, None, "cpu wall clock"


def valid(out, ref64, eager, dtype) -> bool:
    """Validate before timing: the output within the tests' tolerance of the float64 reference."""
    return max_error(out, ref64) <= tolerance(eager, ref64, dtype, backward=False)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _fresh(inputs, dtype=None):
    return [t.detach().to(dtype or t.dtype).requires_grad_(t.requires_grad) for t in inputs]


def outputs_and_grads(fn, inputs, grads):
    """fn's outputs and the gradients of its inputs for the given output gradients."""
    outs = _as_tuple(fn(*inputs))
    leaves = [t for t in inputs if t.requires_grad]
    if not leaves:
        return [o.detach() for o in outs], []
    pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
    dins = torch.autograd.grad([o for o, _ in pairs], leaves, [g.to(o.dtype) for o, g in pairs], allow_unused=True)
    return [o.detach() for o in outs], list(dins)


def check_against_reference(got, ref, eager, dtype, names) -> str | None:
    """None when every output and gradient is within tolerance, else what is wrong."""
    (outs, grads), (ref_outs, ref_grads), (eager_outs, eager_grads) = got, ref, eager
    pairs = [(n, o, r, e, False) for n, o, r, e in zip(names[0], outs, ref_outs, eager_outs)]
    pairs += [(n, o, r, e, True) for n, o, r, e in zip(names[1], grads, ref_grads, eager_grads)]
    for name, o, r, e, backward in pairs:
        if o is None or r is None:
            if (o is None) != (r is None):
                return f"{name}: {'no gradient' if o is None else 'unexpected gradient'}"
            continue
        if o.shape != r.shape:
            return f"{name}: shape {tuple(o.shape)}, expected {tuple(r.shape)}"
        err, tol = max_error(o, r), tolerance(e, r, dtype, backward=backward)
        if not err <= tol:
            return f"{name}: max error {err:.3g} > tolerance {tol:.3g}"
    return None


def short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


class NotMeasured(Exception):
    """A provider that will not be timed: status "skipped", "error" or "invalid", and why."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


def prepare(case: Case, provider: str, settings: Settings) -> dict:
    """Validate `provider` on `case`, then return what to time: {mode: callable}. Raises
    NotMeasured for a provider that is missing (a Skip), raises, or gives wrong results."""
    fn = case.providers[provider]
    if isinstance(fn, Skip):
        raise NotMeasured("skipped", fn.reason)
    if case.prepare is not None:
        return case.prepare(case, provider, settings)
    if "reference" not in case.cache:
        inputs, grads = case.make_inputs()
        in_names = case.input_names or tuple(f"input{i}" for i in range(len(inputs)))
        names = (case.output_names or tuple(f"out{i}" for i in range(len(grads))),
                 tuple(f"d{n}" for n, t in zip(in_names, inputs) if t.requires_grad))
        # float64 unless the case says its reference would not fit (float32 is still ~1e4 x
        # more precise than the bf16 / fp16 results it checks).
        ref_dtype = case.extra.get("reference_dtype", torch.float64)
        ref = outputs_and_grads(case.extra.get("reference_fn", case.reference), _fresh(inputs, ref_dtype),
                                [g.to(ref_dtype) for g in grads])
        eager = outputs_and_grads(case.reference, _fresh(inputs), grads)
        case.cache["reference"] = (inputs, grads, names, ref, eager)
    inputs, grads, names, ref, eager = case.cache["reference"]
    try:
        got = outputs_and_grads(fn, _fresh(inputs), grads)
        problem = check_against_reference(got, ref, eager, case.dtype, names)
    except Exception as e:  # a provider that fails is a record, never the end of the run
        raise NotMeasured("error", short(e)) from e
    if problem:
        raise NotMeasured("invalid", problem)
    del got
    return _autograd_modes(fn, inputs, grads)


def measure(case: Case, settings: Settings) -> list[dict]:
    """Validate, then time, every provider of `case`: one record per provider and mode."""
    if any("compile" in p and not isinstance(fn, Skip) for p, fn in case.providers.items()):
        torch._dynamo.reset()  # one shape per compile: no cache-size limit falls back to eager
    records = []
    for provider in case.providers:
        try:
            modes = prepare(case, provider, settings)
        except NotMeasured as e:
            records.append(record(case, provider, "*", e.status, settings, e.reason))
            continue
        for mode in case.modes:
            try:
                seconds, peak, timer = (case.timer or timed)(modes[mode], settings.device, settings.reps_ms)
            except Exception as e:
                records.append(record(case, provider, mode, "error", settings, short(e)))
                continue
            records.append(ok_record(case, provider, mode, seconds, peak, settings, timer=timer))
        del modes
        if case.cleanup is not None:
            case.cleanup(case, provider)
    case.cache.clear()
    return records


def _autograd_modes(fn, inputs, grads) -> dict:
    leaves = _fresh(inputs)
    wrt = [t for t in leaves if t.requires_grad]
    pairs = [(o, g) for o, g in zip(_as_tuple(fn(*leaves)), grads) if o.requires_grad]
    outs, grads = [o for o, _ in pairs], [g for _, g in pairs]

    def fwd_bwd():
        new = [o for o in _as_tuple(fn(*leaves)) if o.requires_grad]
        torch.autograd.grad(new, wrt, grads)  # the same outputs require grad on every call

    return {"fwd": lambda: fn(*leaves),
            "bwd": lambda: torch.autograd.grad(outs, wrt, grads, retain_graph=True),
            "fwd+bwd": fwd_bwd}


def ok_record(case, provider, mode, seconds, peak, settings, **extra):
    flops, nbytes = case.flops.get(mode, 0.0), case.bytes.get(mode, 0.0)
    row = record(case, provider, mode, "ok", settings, ms=seconds * 1e3,
                 **{"TFLOP/s": flops / seconds / 1e12 if flops else None,
                    "GB/s": nbytes / seconds / 1e9 if nbytes else None},
                 roofline_pct=percent_of_roofline(seconds, flops, nbytes, settings.peaks), peak_bytes=peak, **extra)
    if case.metrics is not None:
        row.update(case.metrics(case, row, seconds, settings))
    metric = row[case.metric]
    settings.log(f"{case.op:<17}{provider:<22}{mode:<8}{case.label:<28}{row['ms']:10.4f} ms "
                 f"{(metric or 0):9.2f} {case.metric}")
    return row


def run_cases(cases, settings: Settings) -> list[dict]:
    records = []
    for case in cases:
        records += measure(case, settings)
    for r in records:
        if r["status"] != "ok":
            settings.log(f"{r['op']:<17}{r['provider']:<22}{r['status']}: {r['reason']}  [{r['shape']}]")
    return records


# -- providers ----------------------------------------------------------------------------------

def available_backends(device) -> list[str]:
    """nk.available_backends, or ["eager"] when asking raises (a broken build must not stop a benchmark)."""
    try:
        return nk.available_backends(device)
    except Exception:
        return ["eager"]


def backend_unavailable(backend: str, device) -> str | None:
    """None when our `backend` can run on `device`, else why not (asking never raises)."""
    from nanogpt_kernels._backend import _why_unavailable

    try:
        return _why_unavailable(backend, device)
    except Exception as e:  # e.g. an extension built from other sources than the Python side expects
        return short(e)


def kernel_backends(device):
    return [b for b in ("triton", "cuda") if b in available_backends(device)]


def backend_or_skip(backend: str, device, make: Callable):
    """make(backend) when our `backend` can run on `device`, else a Skip saying why not."""
    why = backend_unavailable(backend, device)
    return Skip(f"backend {backend!r} unavailable: {why}") if why else make(backend)


def compiled_or_skip(fn, device):
    if device.type != "cuda":
        return Skip("torch.compile: GPU only (compiling on the CPU is slow and says nothing about GPUs)")
    return torch.compile(fn)


def peer(module: str, device, make: Callable, what: str | None = None):
    """A third-party provider: make() when `module` is installed and a GPU is present, else a
    Skip. An import or construction error is a Skip with the error, never a crash."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return Skip(f"{what or module} not installed")
    if device.type != "cuda":
        return Skip(f"{what or module}: GPU only")
    try:
        return make()
    except Exception as e:
        return Skip(f"{what or module} unusable here: {short(e)}")


# -- output -------------------------------------------------------------------------------------

def split_records(records):
    return [r for r in records if r["status"] == "ok"], [r for r in records if r["status"] != "ok"]


def metadata(settings: Settings | None = None, smoke: bool | None = None) -> dict:
    import platform
    import subprocess
    from pathlib import Path

    smoke = settings.smoke if settings is not None else smoke
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not smoke else None
    driver = None
    if gpu is not None:
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = None
    root = Path(__file__).resolve().parent.parent
    commit = None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        if commit and dirty:
            commit += " (with local changes)"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {"gpu": gpu, "smoke": smoke, "label": SMOKE_LABEL if smoke else gpu,
            "driver": driver, "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton_version,
            "nanogpt_kernels": nk.__version__, "git_commit": commit, "python": platform.python_version(),
            "host": platform.node(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backends": available_backends("cuda" if gpu else "cpu")}
    if settings is not None:
        meta.update(dtype=str(settings.dtype).removeprefix("torch."), quick=settings.quick,
                    reps_ms=settings.reps_ms, peaks=settings.peaks)
    return meta


def write_results(path, results, smoke, settings: Settings | None = None):
    """JSON: {"meta", "results": measured records, "skipped": records of providers not measured}."""
    ok, other = split_records(results) if results and "status" in results[0] else (results, [])
    meta = metadata(settings, smoke=smoke)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": ok, "skipped": other}, f, indent=1, default=str)


def device_banner(device) -> str:
    return f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else SMOKE_LABEL}"
