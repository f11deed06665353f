"""`sdfleet bench`: sdfleet against the code a user would otherwise write, side by side.

The command is contributed to `sdfleet` through the `sdfleet.commands` entry-point group
(pyproject.toml): `jobs.cli` finds `register` there and calls it with its sub-parsers, so the
product never imports the harness. Four modes (docs/PERFORMANCE.md):

- throughput (default, `bench.throughput`): every contender on the same rows;
- `--overhead` (`bench.overhead`): `builtin:null` at many rows, sdfleet's cost per row;
- `--animation` (`bench.animation`): the 2D render against a plain img2img loop, the encoder;
- `--quality` (`bench.quality`): prompt adherence beside images/s, by steps, scheduler and
  guidance, on `builtin:shapes` (docs/SHAPES.md).

Every mode prints a table and writes OUT/<mode>.json with the machine, the options, every
sample and the summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from sdfleet.bench.options import add_flags, options_from_args


def register(subparsers: Any) -> None:
    """Add `bench` to the `sdfleet` command's sub-parsers; `handler` runs it."""
    bench = subparsers.add_parser(
        "bench",
        help="measure sdfleet against plain diffusers / Ray Data",
        description=__doc__.split("\n\n")[0],
    )
    add_flags(bench)
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate the flags once, run the chosen mode (it prints its table, writes its JSON)."""
    options = options_from_args(args)
    if options.mode == "overhead":
        from sdfleet.bench.overhead import run_overhead

        run_overhead(options)
    elif options.mode == "animation":
        from sdfleet.bench.animation import run_animation_bench

        run_animation_bench(options)
    elif options.mode == "quality":
        from sdfleet.bench.quality import run_quality_bench

        run_quality_bench(options)
    else:
        from sdfleet.bench.throughput import run_throughput

        run_throughput(options)
    return 0
