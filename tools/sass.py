"""The main loop of a kernel, read from its SASS: what one iteration issues.

`cuobjdump -sass` prints one instruction per line, `/*addr*/  [@P] OPCODE.MODIFIERS operands ;`,
with branch targets as absolute addresses. A loop is a backward branch: `BRA target` at address
A with target < A runs [target, A] again. The main loop is the loop that holds the most
tensor-core instructions (HMMA, HGMMA), the innermost on a tie; in a kernel without them, the
loop with the most global-memory instructions (the streaming loop of a memory-bound kernel).

What one iteration of it issues is counted statically, per warp: every instruction between the
loop's start and its backward branch, once (a loop nested inside the main loop is counted once
per iteration of the main loop, which undercounts it; such loops are reported). Bytes are per
warp instruction (32 threads):

    LDSM.16.M88.N / .MT88.N    N 8x8 matrices of 16-bit values: 128 B x N
    LDS / STS / LDG / STG      4 B per thread unless .64 (8) / .128 (16) / .U16 .S16 (2) / .U8 .S8 (1)
    LDGSTS                     the same widths; counted as a global load and a shared store

    HGMMA 64xNxK               a quarter (one warp's share) of its operands read from shared
                               memory: B (K x N), and A (64 x K) unless A is in registers

Derived, the figures the performance model reads: issue slots per HMMA (every instruction takes
one issue slot of its warp scheduler), shared-memory bytes per HMMA (loads and stores, cp.async
writes and HGMMA operands included), normalised to m16n8k16-equivalents (HMMA.1688 is half of
one; an HGMMA 64xNx16 is 4N/8 of them for its warpgroup, N/8 for each of its 4 warps).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_FUNCTION = re.compile(r"^\s*Function : (\S+)\s*$", re.MULTILINE)
_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:(@!?U?P[T\d]+)\s+)?([A-Z][A-Z0-9_]*)((?:\.[\w]+)*)\s*([^;]*);",
                   re.MULTILINE)
_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")
_HGMMA_SHAPE = re.compile(r"\.64x(\d+)x(\d+)")


@dataclass(frozen=True)
class Instruction:
    address: int
    predicate: str  # "" when always executed
    opcode: str  # "HMMA"
    modifiers: str  # ".16816.F32.BF16"
    operands: str


def functions(sass: str) -> dict[str, list[Instruction]]:
    """{function name: its instructions in address order} from `cuobjdump -sass` output."""
    out = {}
    starts = list(_FUNCTION.finditer(sass))
    for i, m in enumerate(starts):
        body = sass[m.end():starts[i + 1].start() if i + 1 < len(starts) else len(sass)]
        out[m[1]] = [Instruction(int(a, 16), p or "", op, mods, ops.strip())
                     for a, p, op, mods, ops in _LINE.findall(body)]
    return out


def loops(instructions: list[Instruction]) -> list[tuple[int, int]]:
    """(first address, address of the backward branch) of every loop, innermost first."""
    found = set()
    for ins in instructions:
        if ins.opcode in ("BRA", "JMP") and (m := _TARGET.search(ins.operands)):
            target = int(m[1], 16)
            # A branch to itself is the padding after EXIT that ends every function, no loop.
            if target < ins.address:
                found.add((target, ins.address))
    return sorted(found, key=lambda r: (r[1] - r[0], r[0]))


_WIDTHS = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def _width(modifiers: str) -> int:
    """Bytes per thread of a load or store."""
    return next((_WIDTHS[t] for t in modifiers.split(".") if t in _WIDTHS), 4)


def _ldsm_bytes(modifiers: str) -> int:
    """LDSM.16.M88.4: four 8x8 matrices of 16-bit values per warp."""
    matrices = modifiers.split(".")[-1]
    return 128 * (int(matrices) if matrices in ("1", "2", "4") else 1)


def _hmma_equivalents(ins: Instruction) -> float:
    """One warp's share of the instruction's product, in m16n8k16s. Each of the 4 warps of a
    warpgroup issues an HGMMA 64xNxK, which computes a quarter of it: 16 rows."""
    if ins.opcode == "HMMA":
        return 0.5 if ins.modifiers.startswith(".1688") else 1.0
    if ins.opcode == "HGMMA" and (m := _HGMMA_SHAPE.search(ins.modifiers)):
        n, k = int(m[1]), int(m[2])
        return 16 * n * k / (16 * 8 * 16)
    return 0.0


def _hgmma_shared_bytes(ins: Instruction) -> float:
    """One warp's share of the shared memory an HGMMA reads without a load instruction: its B
    operand (K x N) always, its A operand (64 x K) too unless A is in registers (`R..` before the
    descriptor), 16-bit elements (32-bit for TF32)."""
    m = _HGMMA_SHAPE.search(ins.modifiers)
    if ins.opcode != "HGMMA" or not m:
        return 0.0
    n, k = int(m[1]), int(m[2])
    size = 4 if ".TF32" in ins.modifiers else 2
    a_in_registers = re.match(r"\s*R\d+\s*,\s*R\d+\s*,\s*gdesc", ins.operands) is not None
    return (k * n + (0 if a_in_registers else 64 * k)) * size / 4


@dataclass
class LoopMix:
    """What one iteration of a loop issues, per warp."""
    start: int = 0
    end: int = 0
    instructions: int = 0
    hmma: int = 0  # HMMA instructions
    hgmma: int = 0
    mma_equivalents: float = 0.0  # m16n8k16 equivalents of both
    ldsm: int = 0
    lds: int = 0
    sts: int = 0
    ldgsts: int = 0
    ldg: int = 0
    stg: int = 0
    shared_bytes: float = 0  # read and written: cp.async writes and HGMMA operands included
    global_bytes: int = 0  # loaded and stored, cp.async reads included
    mufu: int = 0
    barriers: int = 0  # BAR (block-wide)
    nested_loops: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def issue_per_mma(self) -> float | None:
        return self.instructions / self.mma_equivalents if self.mma_equivalents else None

    @property
    def shared_bytes_per_mma(self) -> float | None:
        return self.shared_bytes / self.mma_equivalents if self.mma_equivalents else None


def mix(instructions: list[Instruction], start: int, end: int) -> LoopMix:
    """The counts of the instructions at addresses start..end."""
    m = LoopMix(start=start, end=end)
    body = [i for i in instructions if start <= i.address <= end]
    m.nested_loops = sum(1 for s, e in loops(body) if (s, e) != (start, end))
    for ins in body:
        m.instructions += 1
        op, mods = ins.opcode, ins.modifiers
        m.mma_equivalents += _hmma_equivalents(ins)
        if op == "HMMA":
            m.hmma += 1
        elif op == "HGMMA":
            m.hgmma += 1
            m.shared_bytes += _hgmma_shared_bytes(ins)
        elif op == "LDSM":
            m.ldsm += 1
            m.shared_bytes += _ldsm_bytes(mods)
        elif op in ("LDS", "STS"):
            setattr(m, op.lower(), getattr(m, op.lower()) + 1)
            m.shared_bytes += 32 * _width(mods)
        elif op == "LDGSTS":
            m.ldgsts += 1
            m.shared_bytes += 32 * _width(mods)
            m.global_bytes += 32 * _width(mods)
        elif op in ("LDG", "STG"):
            setattr(m, op.lower(), getattr(m, op.lower()) + 1)
            m.global_bytes += 32 * _width(mods)
        elif op == "MUFU":
            m.mufu += 1
        elif op == "BAR":
            m.barriers += 1
    if m.nested_loops:
        m.notes.append(f"{m.nested_loops} loop(s) nested in the main loop, counted once per iteration")
    return m


def main_loop(instructions: list[Instruction]) -> LoopMix | None:
    """The mix of the kernel's main loop (see the module docstring), or None without loops."""
    candidates = [mix(instructions, s, e) for s, e in loops(instructions)]
    if not candidates:
        return None
    # Innermost first (loops() order), so max() keeps the innermost of equals.
    best = max(candidates, key=lambda m: m.mma_equivalents)
    if best.mma_equivalents:
        return best
    best = max(candidates, key=lambda m: m.ldg + m.stg + m.ldgsts)
    return best if best.ldg + best.stg + best.ldgsts else None
