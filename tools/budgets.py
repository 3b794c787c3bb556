"""Performance budgets: what each tensor-core kernel's main loop may cost, versioned in
tools/budgets.json and enforced by `python -m tools kernels` (and so by CI).

The targets are the physical limits with headroom: an A100 SM issues 4 instructions per clock
and reads 128 B of shared memory per clock while its tensor cores finish one m16n8k16 HMMA
every 2 clocks, so a main loop above 8 issue slots or 256 shared bytes per HMMA cannot keep
them busy (H100: 4 and 128 at 1 clock per HMMA). TARGETS asks for at most 6 slots and 160 bytes.

Each budgeted kernel (one row of the report: source, arch, kernel) has
    baseline   its figures when it was first recorded (history; never edited)
    budget     what it must not exceed; a kernel change may only lower it, and raising it above
               the baseline needs a "reason" beside it (tests/test_kernels_report.py checks)
    misses     the targets its budget does not meet yet

A row whose figure exceeds its budget fails the check, naming the figure and how it moved;
a tensor-core kernel without an entry fails too (record it with --record-budgets).
"""
from __future__ import annotations

import json
from pathlib import Path

FIGURES = ("issue_per_mma", "shared_bytes_per_mma")
TARGETS = {"issue_per_mma": 6.0, "shared_bytes_per_mma": 160.0}
DEFAULT_PATH = Path(__file__).resolve().parent / "budgets.json"
# Float figures from integer counts: a change below this is the same loop.
_SLACK = 1e-6


def key(row) -> str:
    return f"{row.source} {row.arch} {row.name}"


def budgeted(row) -> bool:
    """Rows the budgets cover: kernels whose main loop issues tensor-core instructions."""
    return row.kind == "gemm" and bool(row.loop_mma_equivalents)


def misses(figures: dict) -> list[str]:
    return [f for f in FIGURES if figures[f] > TARGETS[f] + _SLACK]


def record(rows, date: str) -> dict:
    """A budget file holding every budgeted row's figures of today as its baseline and budget."""
    kernels = {}
    for row in sorted(filter(budgeted, rows), key=key):
        figures = {f: getattr(row, f) for f in FIGURES}
        kernels[key(row)] = {"baseline": figures, "budget": dict(figures), "misses": misses(figures)}
    return {"recorded": date, "targets": TARGETS, "kernels": kernels}


def check(rows, budgets: dict) -> list[str]:
    """One line per violation: a figure over its budget, or a tensor-core kernel with none."""
    failures = []
    entries = budgets["kernels"]
    for row in filter(budgeted, rows):
        entry = entries.get(key(row))
        if entry is None:
            failures.append(f"{key(row)}: no budget (record one: python -m tools kernels --record-budgets)")
            continue
        for figure in FIGURES:
            value, limit = getattr(row, figure), entry["budget"][figure]
            if value > limit + _SLACK:
                failures.append(f"{key(row)}: {figure} {value:.3f} > budget {limit:.3f} "
                                f"(baseline {entry['baseline'][figure]:.3f})")
    return failures


def load(path=DEFAULT_PATH) -> dict:
    return json.loads(Path(path).read_text())


def write(budgets: dict, path=DEFAULT_PATH) -> None:
    Path(path).write_text(json.dumps(budgets, indent=1, sort_keys=False) + "\n")
