"""Contributor tools, run from the source checkout: `python -m tools bench | kernels | predict | readme`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each has a parser of its own: the rest of the command line goes to its main().
COMMANDS = {
    "bench": ("tools.bench", "benchmark every op and a GPT training step against the alternatives"),
    "kernels": ("tools.kernels", "compile every kernel for sm_80/sm_90a and report registers, spills, shared "
                                 "memory, occupancy, tensor cores; compiles are cached "
                                 "($NANOGPT_KERNELS_TOOLS_CACHE, default ~/.cache/nanogpt_kernels/tools)"),
    "predict": ("tools.predict", "predict each op's and a GPT-2 training step's time on A100/H100/H200 from the "
                                 "kernel report and the launches at GPT-2's shapes, against eager PyTorch; "
                                 "check the launch, call and op budgets"),
    "readme": ("tools.readme", "regenerate README.md's performance section from the latest GPU run under "
                               "benchmarks/results/, or from the predictions until there is one (--check: fail "
                               "when it is out of date)"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=f"{help_text} (python -m tools {name} --help)")
    parser.parse_args(argv)  # only --help or a usage error reach here
    return 2


if __name__ == "__main__":
    sys.exit(main())
