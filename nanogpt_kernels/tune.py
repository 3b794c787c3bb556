"""`python -m nanogpt_kernels tune`: measure which backend of each op is fastest on this GPU, and
make it the op's default (backend=None) there.

Each op (layer_norm, add_layer_norm, gelu_mlp and causal_attention forward and backward at the
shapes of one layer of a GPT training step; normal_init_ filling one block's weight matrices)
runs on every backend; each backend's outputs and gradients are checked against eager PyTorch
as `check` does (normal_init_: bit for bit), and the ones that agree are timed: CUDA events around
single calls, the L2 flushed before each, the median of --repeats after a warm-up. The fastest
backend that agreed becomes the op's choice (eager if none is faster); a backend that failed or
disagreed is never chosen, and makes tune exit with status 1.

The table is JSON at $NANOGPT_KERNELS_TUNE_TABLE, else ~/.cache/nanogpt_kernels/tuned.json
($XDG_CACHE_HOME is honoured), with one entry per GPU name: tuning another GPU adds its entry,
tuning this one again replaces it. backend=None on CUDA tensors of a GPU with that name follows
it, unless $NANOGPT_KERNELS_BACKEND is set or the entry is from another nanogpt_kernels or torch.

--smoke runs the same path in seconds on CPU tensors at tiny shapes (triton in Triton's
interpreter, cuda through the CPU harness), timed with the wall clock, for CI. Its entry is
keyed "CPU (smoke)", which no GPU's name matches, so it never sets a default.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

from nanogpt_kernels import _backend
from nanogpt_kernels._cases import CASES, Shape, differing_bits, worst_error
from nanogpt_kernels._version import __version__
from nanogpt_kernels.ops.normal_init import normal_init_

OPS = (*CASES, "normal_init_")
# GPT-2's sizes (n_embd, n_head), all with head_dim 64.
MODELS = {"gpt2": (768, 12), "gpt2-medium": (1024, 16), "gpt2-large": (1280, 20), "gpt2-xl": (1600, 25)}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Two sequences of 17 tokens (odd, so no kernel sees only full tiles), 3 heads of 16 (the
# smallest head_dim the attention kernels take): seconds in the interpreter and the harness.
SMOKE_SHAPE = Shape.of_model(batch=2, seq=17, n_embd=48, n_head=3)
SMOKE_KEY = "CPU (smoke)"
SMOKE_REPEATS = 2
WARMUP = {"cuda": 3, "cpu": 0}
# Bigger than any GPU's L2 (B200: 126 MB), so that zeroing it evicts the previous call's data:
# in a training step, each layer finds its inputs in memory, not in L2.
L2_FLUSH_BYTES = 256 << 20


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2", choices=list(MODELS),
                   help="the GPT whose layer shapes are timed (default gpt2: n_embd 768, 12 heads of 64)")
    p.add_argument("--batch-size", type=_positive_int, default=12, help="sequences per step (default 12, nanoGPT's)")
    p.add_argument("--block-size", type=_positive_int, default=1024, help="tokens per sequence (default 1024)")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES),
                   help="the dtype the ops compute in (default bfloat16, as under nanoGPT's autocast)")
    p.add_argument("--device", default="cuda", help="the CUDA device to tune (default: the current one)")
    p.add_argument("--repeats", type=_positive_int, default=20,
                   help=f"timed calls per backend; the median counts (default 20; --smoke: {SMOKE_REPEATS})")
    p.add_argument("--smoke", action="store_true",
                   help="CPU tensors, tiny shapes, wall clock: the whole path in seconds, for CI (ignores "
                   "--model, --batch-size, --block-size, --device and --repeats)")


def run(args) -> int:
    dtype = DTYPES[args.dtype]
    if args.smoke:
        device, shape, repeats, key, model = torch.device("cpu"), SMOKE_SHAPE, SMOKE_REPEATS, SMOKE_KEY, "smoke"
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device must be cuda or cuda:N, got {args.device!r} ({e})") from None
        if device.type != "cuda":
            raise ValueError(f"--device must be a CUDA device (tune measures a GPU), got {args.device!r}; "
                             "--smoke runs the same path on the CPU")
        if not torch.cuda.is_available():
            print("error: tune measures a CUDA GPU, and torch sees none (torch.cuda.is_available() is False); "
                  "--smoke runs the same path on the CPU at tiny shapes", file=sys.stderr)
            return 2
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device!r}: torch sees {torch.cuda.device_count()} GPU(s)")
        n_embd, n_head = MODELS[args.model]
        shape, repeats, key, model = Shape.of_model(args.batch_size, args.block_size, n_embd, n_head), \
            args.repeats, _backend.gpu_name(device), args.model
    entry = {
        "tuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nanogpt_kernels": __version__,
        "torch": torch.__version__,
        "triton": _backend.triton_version() if _backend.triton_installed() else None,
        "device": device.type,
        "model": model,
        "dtype": args.dtype,
        "shape": {"batch": shape.batch, "block": shape.seq, "n_embd": shape.hidden, "n_head": shape.n_head,
                  "head_dim": shape.head_dim},
        "timer": (f"CUDA events around single calls, L2 flushed before each, median of {repeats} after "
                  f"{WARMUP['cuda']} warm-up calls" if device.type == "cuda" else
                  f"wall clock, median of {repeats} calls"),
        "ops": {},
    }
    print(f"nanogpt_kernels {__version__} tune on {key}: torch {torch.__version__}, triton {entry['triton']}")
    print(f"{model}: {shape.batch} x {shape.seq} tokens, n_embd {shape.hidden}, {shape.n_head} heads of "
          f"{shape.head_dim}, {args.dtype}; forward + backward, {entry['timer']}")
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for op in OPS:
            entry["ops"][op] = tune_op(op, shape, dtype, device, repeats)
    path = write_entry(key, entry)
    _backend.reset_tuned_table()  # this process, too, now resolves by the new table
    print_table(entry)
    print(f"wrote {path}" + (" (a smoke entry: CPU timings, never a GPU's default)" if args.smoke else
                             f"; backend=None on {key} now takes the 'default' column"))
    failed = [(op, b) for op, r in entry["ops"].items() for b, m in r["backends"].items()
              if m["verdict"] in ("wrong", "failed")]
    if failed:
        print("some backends failed or disagreed with eager (they are never chosen): "
              + ", ".join(f"{op} on {b}" for op, b in failed) + "; `python -m nanogpt_kernels check` says more")
    return 1 if failed else 0


def tune_op(op: str, shape: Shape, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    """{"shapes": the inputs' shapes, "backends": {backend: {"verdict", "ms", ...}}, "choice"}."""
    if op == "normal_init_":
        shapes, measured = _tune_normal_init(shape, dtype, device, repeats)
    else:
        case = CASES[op](shape, device, torch.Generator().manual_seed(0))
        shapes, measured = case.shapes, _tune_case(case, dtype, device, repeats)
    timed = {b: m["ms"] for b, m in measured.items() if m["verdict"] == "pass"}
    # min() keeps the first of equal times, and eager comes first: a kernel must be faster to win.
    choice = min(timed, key=timed.get) if timed else None
    return {"shapes": shapes, "backends": measured, "choice": choice}


def _tune_case(case, dtype, device, repeats) -> dict:
    try:
        ref, eager = case.run(case.eager, torch.float64), case.run(case.eager, dtype)
    except Exception as e:  # no reference (out of memory, say): nothing can be judged, nothing chosen
        return {b: _failed(e) for b in _backend.BACKENDS}

    def attempt(backend):
        fn, prepared = case.ours(backend), case.prepare(dtype)
        return _verdict(*worst_error(case.step(fn, prepared), eager, ref, dtype)), lambda: case.step(fn, prepared)

    return _measure(attempt, device, repeats)


def _tune_normal_init(shape, dtype, device, repeats) -> tuple[dict, dict]:
    # One block's weight matrices (c_attn, attn.c_proj, c_fc, mlp.c_proj) from nanoGPT's N(0, 0.02).
    C = shape.hidden
    sizes = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]
    tensors = [torch.empty(s, dtype=dtype, device=device) for s in sizes]
    shapes = {f"tensors[{i}]": list(s) for i, s in enumerate(sizes)}

    def fill(backend):
        return normal_init_(tensors, [0.02] * len(tensors), seed=1, backend=backend)

    try:
        want = [t.clone() for t in fill("eager")]  # the reference generator
    except Exception as e:
        return shapes, {b: _failed(e) for b in _backend.BACKENDS}

    def attempt(backend):
        wrong = sum(differing_bits(t, w) for t, w in zip(fill(backend), want))
        return _verdict("bits", wrong, 0), lambda: fill(backend)

    return shapes, _measure(attempt, device, repeats)


def _measure(attempt, device, repeats) -> dict:
    """{backend: record} where attempt(backend) runs the backend once and returns (its record,
    the call to time); the call is timed only when the record says it agreed with eager."""
    measured = {}
    for backend in _backend.BACKENDS:
        why = _backend._why_unavailable(backend, device)
        if why is not None:
            measured[backend] = {"verdict": "unavailable", "ms": None, "error": why}
            continue
        try:
            record, call = attempt(backend)
            if record["verdict"] == "pass":
                record["ms"] = median_ms(call, device, repeats)
        except Exception as e:  # a failing backend is a row of the table, never a choice
            record = _failed(e)
        measured[backend] = record
    return measured


def _verdict(worst: str, err: float, tol: float) -> dict:
    return {"verdict": "pass" if err <= tol else "wrong", "ms": None, "worst": worst, "max_error": err,
            "tolerance": tol}


def _failed(e: Exception) -> dict:
    return {"verdict": "failed", "ms": None, "error": f"{type(e).__name__}: {e}"[:500]}


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """The median milliseconds of `repeats` calls of fn() after a warm-up: CUDA events on a GPU
    (each call alone, the L2 flushed before it), the wall clock on the CPU."""
    for _ in range(WARMUP[device.type]):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def write_entry(key: str, entry: dict):
    """Put `entry` under `key` in the table, keeping the other GPUs' entries, and return its path.
    The file is replaced whole, so that a process reading it never sees half of it."""
    path = _backend.tune_table_path()
    entries, why = _read_for_update(path)
    if why is not None:
        print(f"replacing {path}: {why}")
    entries[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": _backend.TUNE_FORMAT, "gpus": entries}, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _read_for_update(path) -> tuple[dict, str | None]:
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as e:
        return {}, f"it could not be read ({e})"
    if not isinstance(table, dict) or table.get("format") != _backend.TUNE_FORMAT or \
            not isinstance(table.get("gpus"), dict):
        return {}, f"it is not a format-{_backend.TUNE_FORMAT} table"
    return table["gpus"], None


def print_table(entry: dict) -> None:
    header = f"{'op':<18}" + "".join(f"{b:>14}" for b in _backend.BACKENDS) + "  default"
    print(header)
    print("-" * len(header))
    notes = {}  # one line per problem: an unavailable backend is unavailable for every op
    for op, result in entry["ops"].items():
        cells = []
        for backend, m in result["backends"].items():
            cells.append(f"{m['ms']:.4g} ms" if m["ms"] is not None else m["verdict"])
            if m["verdict"] == "unavailable":
                notes.setdefault(f"{backend}: not available here: {m['error']}", None)
            elif m["verdict"] == "wrong":
                notes[f"{op} on {backend}: {m['worst']} off by {m['max_error']:.3g}, "
                      f"tolerance {m['tolerance']:.3g}"] = None
            elif m["verdict"] == "failed":
                notes[f"{op} on {backend}: {m['error']}"] = None
        print(f"{op:<18}" + "".join(f"{c:>14}" for c in cells) + f"  {result['choice'] or 'none'}")
    for note in notes:
        print(f"  {note}")
