"""The benchmark suite: `python -m tools bench [--ops ...] [--quick] [--out DIR]`, run from the
source checkout.

Runs every op benchmark of `benchmarks/` (LayerNorm, add_layer_norm, causal attention, GELU-MLP,
normal init) and the end-to-end GPT-2 training step, then writes into DIR:

    results.csv     one row per op, shape, provider and mode (skipped and failed ones too, with why)
    results.json    the same with metadata: GPU, driver, CUDA, torch, triton, package version,
                    git commit, date, measured and datasheet peaks, settings
    summary.md      one markdown table per op, measured against predicted time, then what was
                    skipped and why
    plots/<op>.png  TFLOP/s or GB/s against size, one line per provider, the roofline drawn in

Beside each measured time of eager and of our CUDA kernels is the static model's prediction for
the same shape on this GPU (tools/predict.py; "predicted_ms", and "measured_over_predicted": the
first GPU run calibrates the model). A smoke run predicts for an A100, and says so. Before the
cases, the run prints which backend `backend=None` takes for each op here, and why.

Every provider is validated against eager PyTorch before it is timed; a missing peer or a
failing provider is reported (skipped / error / invalid), never fatal. The exit status is 1
when one of our own providers (triton, cuda, fused-*) gives wrong results, else 0.

On a GPU, peaks are measured at start-up (a large device copy, a large bf16 GEMM) and each
timing is triton.testing.do_bench's median (warm-up, L2 flushed). Without a GPU the suite runs
in smoke mode: tiny shapes, CPU providers, every figure labelled "not GPU figures"; it
exercises every code path, and its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import json
import math
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common, roofline
from benchmarks.gpus import GPUS, lookup
from tools import progress

# op -> the benchmark module that measures it
OPS = {"layer_norm": "bench_layernorm", "add_layer_norm": "bench_layernorm", "causal_attention": "bench_attention",
       "gelu_mlp": "bench_mlp", "normal_init": "bench_init", "gpt2_train_step": "bench_e2e"}
ALIASES = {"e2e": "gpt2_train_step", "layernorm": "layer_norm", "attention": "causal_attention", "mlp": "gelu_mlp",
           "init": "normal_init"}
OUR_PROVIDERS = ("triton", "cuda")  # and every "fused-..." of the end-to-end benchmark
PLOT_MODES = ("fwd", "bwd", "fwd+bwd")


def _is_ours(provider: str) -> bool:
    return provider in OUR_PROVIDERS or provider.startswith("fused-")


class _Progress:
    """tqdm when it is installed, else one plain line per step."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.total, self.done = total, 0
        self.bar = tqdm(total=total, unit="case", dynamic_ncols=True, file=sys.stderr) if tqdm else None

    def log(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def step(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what[:60])
            self.bar.update(1)
        else:
            progress(self.done, self.total, what)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def collect_cases(ops, settings):
    """(cases, records of ops whose benchmark could not even be set up)."""
    by_module: dict[str, list[str]] = {}
    for op in ops:
        by_module.setdefault(OPS[op], []).append(op)
    cases, failed = [], []
    for module_name, module_ops in by_module.items():
        try:
            module = importlib.import_module(f"benchmarks.{module_name}")
            if module_name == "bench_layernorm":
                cases += module.cases(settings, ops=tuple(module_ops))
            else:
                cases += module.cases(settings)
        except Exception as e:
            for op in module_ops:
                failed.append(_failed_op_record(op, "error", f"benchmark set-up failed: {common.short(e)}", settings))
    if settings.quick:  # compiling takes longer than measuring: one shape per op is enough for a quick run
        seen = set()
        for case in cases:
            if case.op in seen and callable(case.providers.get("torch.compile")):
                case.providers["torch.compile"] = common.Skip("--quick: torch.compile is measured at the first "
                                                              "shape of each op only")
            seen.add(case.op)
    return cases, failed


def _failed_op_record(op, status, reason, settings):
    return {"op": op, "provider": "*", "mode": "*", "shape": "*", "size": None, "dtype": str(settings.dtype).removeprefix(
        "torch."), "status": status, "reason": reason, "ms": None, "timer": None, "TFLOP/s": None, "GB/s": None, "roofline_pct": None,
            "peak_bytes": None, "flops": None, "bytes": None, "valid": False, "smoke": settings.smoke}


def run_suite(ops, settings):
    cases, records = collect_cases(ops, settings)
    progress = _Progress(len(cases))
    settings.log = progress.log
    try:
        for case in cases:
            try:
                records += common.measure(case, settings)
            except Exception as e:  # one case failing (say, out of memory) must not end the run
                progress.log(traceback.format_exc(limit=3))
                records.append(_failed_op_record(case.op, "error", f"{case.label}: {common.short(e)}", settings))
            progress.step(f"{case.op} {case.label}")
            _free_memory()
    finally:
        progress.close()
    return records


def _free_memory():
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# The GPU a smoke run's predictions are for (it has none of its own).
SMOKE_PREDICTION_GPU = "A100-SXM-80GB"
# The public op each benchmark times, for backend=None's choice.
DEFAULT_BACKEND_OPS = {"layer_norm": "layer_norm", "add_layer_norm": "add_layer_norm",
                       "causal_attention": "causal_attention", "gelu_mlp": "gelu_mlp", "normal_init": "normal_init_"}


def default_backends(ops, device) -> dict:
    """{op: (backend, why)}: what backend=None resolves to for each benchmarked op on `device`."""
    from nanogpt_kernels import _backend
    return {op: _backend.explain_default(DEFAULT_BACKEND_OPS[op], device) for op in ops if op in DEFAULT_BACKEND_OPS}


def add_predictions(records, gpu_name: str | None, smoke: bool, kernel_report: str | None = None) -> str | None:
    """Adds the static model's prediction (predicted_ms, predicted_for, measured_over_predicted)
    to each measured record of eager and cuda on the ops it models; returns why there are none,
    or None. It reads the kernel report `kernel_report` (JSON of `python -m tools kernels`), or
    else compiles the CUDA kernels for it (from the compile cache after the first time; nvcc
    needed)."""
    from tools import predict

    gpu = GPUS[SMOKE_PREDICTION_GPU] if smoke else lookup(gpu_name)
    if gpu is None:
        return f"no prediction: {gpu_name} is not in benchmarks/gpus.py"
    try:
        rows = predict.rows_from_report(kernel_report) if kernel_report else predict.cuda_rows(("sm_80", "sm_90a"))
    except Exception as e:  # no nvcc or no report: the launches are still predicted, from shapes alone
        rows, why = {}, f"kernel report unavailable ({common.short(e)}): predictions without registers or main loops"
    else:
        why = None
    cache = {}
    for r in records:
        if r["status"] != "ok" or r["op"] not in predict.BENCH_OPS or r["provider"] not in ("cuda", "eager"):
            continue
        key = (r["op"], r["shape"])
        if key not in cache:
            cache[key] = predict.predict_bench(r["op"], r, gpu, rows)
        seconds = cache[key][r["provider"]].get(r["mode"])
        if seconds:
            r["predicted_ms"] = seconds * 1e3
            r["predicted_for"] = gpu.name
            r["measured_over_predicted"] = r["ms"] / r["predicted_ms"]
    return why


# -- outputs -------------------------------------------------------------------------------------

def write_csv(path: Path, records, columns) -> None:
    extra = []
    for r in records:
        extra += [k for k in r if k not in columns and k not in extra]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, *extra], extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _cell(r):
    metric = r.get("metric") or ("TFLOP/s" if r.get("TFLOP/s") else "GB/s")
    value = r.get(metric)
    pct = f" ({r['roofline_pct']:.0f}%)" if r.get("roofline_pct") is not None else ""
    return f"{r['ms']:.4g} ms, {_fmt(value)} {metric}{pct}"


def summary_markdown(meta, records) -> str:
    lines = ["# nanogpt-kernels benchmark results", ""]
    if meta["smoke"]:
        lines += [f"**{meta['label']}.** Smoke mode: tiny shapes on the CPU, run so that every code path of the "
                  "suite is exercised. These numbers say nothing about GPU performance.", ""]
    peaks, sheet = meta.get("peaks") or {}, meta.get("datasheet_peaks") or {}
    info = [("GPU", meta["gpu"] or "none (CPU smoke run)"), ("driver", meta["driver"]), ("CUDA (torch)", meta["cuda"]),
            ("torch", meta["torch"]), ("triton", meta["triton"]), ("nanogpt_kernels", meta["nanogpt_kernels"]),
            ("git commit", meta["git_commit"]), ("date", meta["date"]), ("dtype", meta.get("dtype")),
            ("quick", meta.get("quick")),
            ("measured peaks", f"{_fmt(peaks.get('bandwidth', 0) / 1e9)} GB/s, {_fmt(peaks.get('flops', 0) / 1e12)} "
                               f"TFLOP/s ({peaks.get('source', '-')})" if peaks else "-"),
            ("datasheet peaks", f"{_fmt(sheet['bandwidth'] / 1e9)} GB/s, {_fmt(sheet['flops'] / 1e12)} TFLOP/s "
                                f"({sheet['source']})" if sheet else "-")]
    lines += ["| | |", "| --- | --- |", *[f"| {k} | {_fmt(v)} |" for k, v in info], ""]
    lines += ["Cells: median time, achieved throughput, and in brackets the percentage of the roofline "
              "(max of FLOPs / peak FLOP/s and bytes / peak bandwidth, with the peaks measured above). "
              "Each provider was validated against eager PyTorch before it was timed.", ""]
    ok = [r for r in records if r["status"] == "ok"]
    ops = list(dict.fromkeys(r["op"] for r in records))
    for op in ops:
        rows = [r for r in ok if r["op"] == op]
        if not rows:
            continue
        metric = rows[0].get("metric", "")
        lines += [f"## {op} ({metric})", ""]
        if op == "gpt2_train_step":
            lines += _e2e_table(rows)
            continue
        modes = [m for m in PLOT_MODES if any(r["mode"] == m for r in rows)]
        speedup_mode = "fwd+bwd" if "fwd+bwd" in modes else modes[-1]
        baseline = rows[0]["provider"]  # each benchmark lists its eager baseline first
        lines += ["| shape | provider | " + " | ".join(modes) + f" | {speedup_mode} speedup over {baseline} |",
                  "| --- | --- | " + " | ".join("---" for _ in modes) + " | ---: |"]
        for shape in dict.fromkeys(r["shape"] for r in rows):
            at = {(r["provider"], r["mode"]): r for r in rows if r["shape"] == shape}
            base = at.get((baseline, speedup_mode))
            for provider in dict.fromkeys(p for p, _ in at):
                cells = [_cell(at[provider, m]) if (provider, m) in at else "-" for m in modes]
                mine = at.get((provider, speedup_mode))
                speedup = f"{base['ms'] / mine['ms']:.2f}x" if base and mine else "-"
                lines.append(f"| {shape} | {provider} | " + " | ".join(cells) + f" | {speedup} |")
        lines.append("")
    predicted = [r for r in ok if r.get("predicted_ms")]
    if predicted:
        gpus = sorted({r["predicted_for"] for r in predicted})
        lines += ["## Measured against predicted", "",
                  f"The static model's prediction (tools/predict.py) for {', '.join(gpus)}"
                  + (" (a smoke run has no GPU: the ratios mean nothing)" if meta["smoke"] else "")
                  + "; measured / predicted above 1 means slower than predicted.", "",
                  "| op | shape | provider | mode | measured | predicted | measured / predicted |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: |"]
        for r in predicted:
            lines.append(f"| {r['op']} | {r['shape']} | {r['provider']} | {r['mode']} | {r['ms']:.4g} ms | "
                         f"{r['predicted_ms']:.4g} ms | {r['measured_over_predicted']:.2f} |")
        lines.append("")
    defaults = meta.get("default_backends") or {}
    if defaults:
        lines += ["## backend=None", "", "| op | backend | why |", "| --- | --- | --- |"]
        lines += [f"| {op} | {b} | {why.replace('|', '/')} |" for op, (b, why) in defaults.items()]
        lines.append("")
    not_ok = [r for r in records if r["status"] != "ok"]
    if not_ok:
        lines += ["## Not measured", "", "| op | provider | status | reason | shapes |", "| --- | --- | --- | --- | ---: |"]
        grouped: dict = {}
        for r in not_ok:
            grouped.setdefault((r["op"], r["provider"], r["status"], r["reason"]), []).append(r["shape"])
        for (op, provider, status, reason), shapes in grouped.items():
            reason = reason.replace("|", "\\|")
            lines.append(f"| {op} | {provider} | {status} | {reason} | {len(set(shapes))} |")
        lines.append("")
    lines += ["## Plots", ""] + [f"![{op}](plots/{op}.png)" for op in ops] + [""]
    return "\n".join(lines)


def _e2e_table(rows):
    lines = ["MFU is nanoGPT's: 6 N + 12 L H Q T FLOPs per token, which counts attention as non-causal "
             "(twice the causal kernels' work).", "",
             "| model | provider | step | tokens/s | TFLOP/s | MFU (datasheet) | MFU (measured peak) | peak memory "
             "| vs eager |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        at = [r for r in rows if r["shape"] == shape]
        base = next((r for r in at if r["provider"] == "eager"), None)
        for r in at:
            pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
            mem = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2 ** 30:.1f} GiB"
            vs = f"{base['ms'] / r['ms']:.2f}x" if base else "-"
            lines.append(f"| {shape} | {r['provider']} | {r['ms']:.1f} ms | {r['tokens/s']:,.0f} | "
                         f"{_fmt(r['TFLOP/s'])} | {pct(r.get('MFU'))} | {pct(r.get('MFU_measured'))} | {mem} | {vs} |")
    return lines + [""]


def write_plots(plot_dir: Path, meta, records) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    peaks = meta.get("peaks") or {}
    written = []
    for op in dict.fromkeys(r["op"] for r in records):
        rows = [r for r in records if r["op"] == op and r["status"] == "ok" and r.get("plot", True)]
        path = plot_dir / f"{op}.png"
        if op == "gpt2_train_step":
            fig = _plot_e2e(plt, rows)
        else:
            modes = [m for m in PLOT_MODES if any(r["mode"] == m for r in rows)] or ["fwd"]
            fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
            for ax, mode in zip(axes[0], modes):
                _plot_mode(ax, [r for r in rows if r["mode"] == mode], mode, peaks)
            if not rows:
                axes[0][0].text(0.5, 0.5, "no measurements (every provider skipped)", ha="center", va="center",
                                transform=axes[0][0].transAxes)
        title = f"{op}: {meta['label']}" + (" (tiny shapes; every code path, no meaningful number)"
                                             if meta["smoke"] else "")
        fig.suptitle(title, color="red" if meta["smoke"] else "black")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _plot_mode(ax, rows, mode, peaks):
    metric = rows[0]["metric"] if rows else "GB/s"
    lines: dict = {}
    for r in rows:
        key = r["provider"] + (f" ({r['series']})" if r.get("series") else "")
        lines.setdefault(key, []).append((r["size"], r[metric]))
    for key, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    if peaks and rows:
        sizes = sorted({r["size"] for r in rows})
        if metric == "GB/s":
            ax.axhline(peaks["bandwidth"] / 1e9, color="black", linestyle="--", label="roofline (measured copy)")
        else:
            for series in dict.fromkeys(r.get("series", "") for r in rows):
                at = {r["size"]: r for r in rows if r.get("series", "") == series}
                xs = [s for s in sizes if s in at]
                ys = [roofline.attainable_flops(at[s]["flops"] / at[s]["bytes"], peaks["flops"], peaks["bandwidth"]) / 1e12
                      if at[s].get("bytes") else peaks["flops"] / 1e12 for s in xs]
                ax.plot(xs, ys, color="black", linestyle="--", label=f"roofline {series}".strip())
    ax.set_xscale("log", base=2)
    ax.set_xlabel(rows[0]["size_name"] if rows else "size")
    ax.set_ylabel(metric)
    ax.set_title(mode)
    ax.grid(True, alpha=0.3)
    if rows:
        ax.legend(fontsize=7)


def _plot_e2e(plt, rows):
    fig, ax = plt.subplots(figsize=(8, 4.2))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(1, len(providers))
    for i, provider in enumerate(providers):
        values = [next((r["tokens/s"] for r in rows if r["shape"] == s and r["provider"] == provider), 0)
                  for s in shapes]
        ax.bar([j + i * width for j in range(len(shapes))], values, width, label=provider)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, fontsize=8)
    ax.set_ylabel("tokens/s")
    ax.set_title("training step: forward, backward, AdamW")
    ax.grid(True, axis="y", alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no measurements (every provider skipped)", ha="center", va="center", transform=ax.transAxes)
    return fig


# -- entry point -----------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", default=None, metavar="OP",
                   help=f"ops to run (default: all): {', '.join(OPS)} (also: {', '.join(ALIASES)})")
    p.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing (the GPU validation run)")
    p.add_argument("--smoke", action="store_true", help="the CPU smoke run even where there is a GPU (tiny shapes, "
                                                        "CPU providers: it checks the suite, not speed)")
    p.add_argument("--out", default=None, help="report folder (default: bench-results/<UTC date and time>)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--kernel-report", default=None, metavar="PATH",
                   help="the JSON of `python -m tools kernels` the predictions read (default: compile the CUDA "
                        "kernels, or take them from the compile cache)")
    p.add_argument("--reps", type=int, default=None, help="ms of timing per measurement on a GPU "
                                                          "(default 100, 30 with --quick)")
    args = p.parse_args(argv)
    ops = [ALIASES.get(op, op) for op in (args.ops or OPS)]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        p.error(f"unknown op(s) {unknown}; choose from {list(OPS)} or {list(ALIASES)}")
    args.ops = list(dict.fromkeys(ops))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    started = time.perf_counter()
    out = Path(args.out or Path("bench-results") / datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    settings = common.Settings.detect(smoke=args.smoke, quick=args.quick, dtype=getattr(torch, args.dtype),
                                      reps_ms=args.reps or (30 if args.quick else 100))
    print(common.device_banner(settings.device), flush=True)
    settings.peaks = roofline.measure_peaks(settings.device, quick=args.quick)
    print(f"peaks: {settings.peaks['bandwidth'] / 1e9:.1f} GB/s, {settings.peaks['flops'] / 1e12:.2f} TFLOP/s "
          f"({settings.peaks['source']})", flush=True)
    defaults = default_backends(args.ops, settings.device)
    for op, (backend, why) in defaults.items():
        print(f"backend=None for {op}: {backend} ({why})", flush=True)
    records = run_suite(args.ops, settings)

    meta = common.metadata(settings)
    meta["default_backends"] = defaults
    why = add_predictions(records, meta["gpu"], meta["smoke"], args.kernel_report)
    if why:
        print(why, file=sys.stderr)
    meta["datasheet_peaks"] = roofline.datasheet_peaks(meta["gpu"])
    meta["ops"] = args.ops
    meta["argv"] = list(sys.argv if argv is None else argv)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    ok, not_ok = common.split_records(records)
    write_csv(out / "results.csv", records, common.COLUMNS)
    with open(out / "results.json", "w") as f:
        json.dump({"meta": meta, "results": ok, "skipped": not_ok}, f, indent=1, default=str)
    (out / "summary.md").write_text(summary_markdown(meta, records))
    try:
        write_plots(out / "plots", meta, records)
    except Exception as e:  # plots are a view of the results, which are already written
        print(f"plots not written: {common.short(e)}", file=sys.stderr)

    wrong = [r for r in records if r["status"] == "invalid" and _is_ours(r["provider"])]
    errors = [r for r in records if r["status"] == "error"]
    print(f"\n{len(ok)} measurements, {len(not_ok)} not measured ({len(errors)} errors, "
          f"{sum(r['status'] == 'invalid' for r in records)} failed validation) in {meta['seconds']:.0f} s")
    print(f"report: {out}/summary.md (results.csv, results.json, plots/)")
    if meta["smoke"]:
        print(common.SMOKE_LABEL)
    for r in wrong:
        print(f"WRONG RESULTS: {r['op']} {r['provider']} {r['shape']}: {r['reason']}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
