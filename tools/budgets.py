"""Performance budgets: what each kernel, each launch of a GPT-2 training step and each op may
cost, versioned in tools/budgets.json and enforced by `python -m tools kernels` (the "kernels"
section) and `python -m tools predict` (the others), and so by CI.

The targets are the physical limits with headroom: an A100 SM issues 4 instructions per clock
and reads 128 B of shared memory per clock while its tensor cores finish one m16n8k16 HMMA
every 2 clocks, so a main loop above 8 issue slots or 256 shared bytes per HMMA cannot keep
them busy (H100: 4 and 128 at 1 clock per HMMA). TARGETS asks for

    kernels   tensor-core main loops: at most 6 issue slots and 160 shared bytes per HMMA
    launches  every launch of a GPT-2 124M/350M step on 108 and 132 SMs: wave efficiency at
              least 85%; ldmatrix and cp.async conflict-free (1 wavefront per ideal one); memory-
              bound launches: at least 16 KB of loads in flight per SM and 90% of their global
              bytes in 128-bit accesses
    calls     the memory-bound C++ op calls (LayerNorm, column sums, init): bytes moved at most
              1.15x the ideal
    ops       each op's predicted speedup over eager at least 1.0, per GPU

Each entry has
    baseline   its figures when it was first recorded (history; never edited)
    budget     the limit: a change may only tighten it (lower for a cost, higher for what
               HIGHER_IS_BETTER names), and loosening it past the baseline needs a "reason"
               beside it (tests/test_kernels_report.py checks)
    misses     the targets its budget does not meet yet

A figure worse than its budget fails the check, naming the figure and how it moved; a tensor-
core kernel, launch, call or op without an entry fails too (record it with --record-budgets).
"""
from __future__ import annotations

import json
from pathlib import Path

FIGURES = ("issue_per_mma", "shared_bytes_per_mma")
TARGETS = {"issue_per_mma": 6.0, "shared_bytes_per_mma": 160.0, "wave_efficiency": 0.85, "bank_conflicts": 1.0,
           "in_flight_kb": 16.0, "wide_access_share": 0.9, "bytes_ratio": 1.15, "speedup": 1.0}
HIGHER_IS_BETTER = {"wave_efficiency", "in_flight_kb", "wide_access_share", "speedup"}
SECTIONS = ("kernels", "launches", "calls", "ops")
DEFAULT_PATH = Path(__file__).resolve().parent / "budgets.json"
# Float figures from integer counts: a change below this is the same loop.
_SLACK = 1e-6


def key(row) -> str:
    return f"{row.source} {row.arch} {row.name}"


def budgeted(row) -> bool:
    """Rows the budgets cover: kernels whose main loop issues tensor-core instructions."""
    return row.kind == "gemm" and bool(row.loop_mma_equivalents)


def worse(figure: str, value: float, limit: float) -> bool:
    """Whether `value` of `figure` falls short of `limit`."""
    return value < limit - _SLACK if figure in HIGHER_IS_BETTER else value > limit + _SLACK


def misses(figures: dict) -> list[str]:
    return [f for f, v in figures.items() if worse(f, v, TARGETS[f])]


def entry(figures: dict) -> dict:
    return {"baseline": figures, "budget": dict(figures), "misses": misses(figures)}


def check_section(current: dict, entries: dict, command: str) -> list[str]:
    """One line per violation of {key: {figure: value}} against a section's entries."""
    failures = []
    for name, figures in current.items():
        budget = entries.get(name)
        if budget is None:
            failures.append(f"{name}: no budget (record one: {command} --record-budgets)")
            continue
        for figure, value in figures.items():
            limit = budget["budget"].get(figure)
            if limit is None:
                failures.append(f"{name}: no budget for {figure} (record one: {command} --record-budgets)")
            elif worse(figure, value, limit):
                sign = "<" if figure in HIGHER_IS_BETTER else ">"
                failures.append(f"{name}: {figure} {value:.3f} {sign} budget {limit:.3f} "
                                f"(baseline {budget['baseline'][figure]:.3f})")
    return failures


def kernel_figures(rows) -> dict:
    return {key(row): {f: getattr(row, f) for f in FIGURES} for row in sorted(filter(budgeted, rows), key=key)}


def record(rows, date: str, previous: dict | None = None) -> dict:
    """A budget file holding every budgeted row's figures of today as its baseline and budget,
    and the other sections of `previous` unchanged."""
    out = {**(previous or {}), "recorded": date, "targets": TARGETS}
    out["kernels"] = {name: entry(figures) for name, figures in kernel_figures(rows).items()}
    return out


def check(rows, budgets: dict) -> list[str]:
    """One line per violation: a figure over its budget, or a tensor-core kernel with none."""
    return check_section(kernel_figures(rows), budgets["kernels"], "python -m tools kernels")


def load(path=DEFAULT_PATH) -> dict:
    return json.loads(Path(path).read_text())


def write(budgets: dict, path=DEFAULT_PATH) -> None:
    Path(path).write_text(json.dumps(budgets, indent=1, sort_keys=False) + "\n")
