"""``tune``'s command line: its flags and the options they make. Light on purpose:
every ``embedloom`` start builds this parser."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embedloom.bench.flags import add_text_arguments, parse_levels, words_from
from embedloom.bench.workload import RequestMix
from embedloom.errors import InvalidInput

__all__ = ["DEFAULT_MIX", "TuneOptions", "add_arguments", "options_from", "parse_budget"]

# The mixed workload of the project's benchmarks: mostly single sentences.
DEFAULT_MIX = "1:70,8:20,64:10"
_DEFAULT_MIX = RequestMix.parse(DEFAULT_MIX)


@dataclass(frozen=True, slots=True)
class TuneOptions:
    output: Path
    overwrite: bool = False
    texts: str | None = None
    text_field: str = "text"
    words: float | None = None  # mean words of generated texts (None: the default)
    mix: RequestMix = _DEFAULT_MIX
    target: Literal["throughput", "latency"] = "throughput"
    max_p99_ms: float | None = None
    concurrency: int = 16
    rate: float | None = None
    budget_seconds: float = 300.0
    duration: float = 10.0
    warmup: float = 2.0
    progress: bool = True


def parse_budget(text: str) -> float:
    """``5m``, ``90s``, ``1h`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match[1]) <= 0:
        raise InvalidInput(f"--budget {text!r}: write a time such as 5m, 90s or 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``tune``'s own flags (it takes serve's model and store flags too)."""
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("embedloom.toml"),
        help="the config file to write (embedloom.toml)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_text_arguments(parser)
    parser.add_argument(
        "--inputs-per-request",
        default=DEFAULT_MIX,
        metavar="MIX",
        help=f"request sizes with weights ({DEFAULT_MIX})",
    )
    parser.add_argument(
        "--target",
        choices=("throughput", "latency"),
        default="throughput",
        help="throughput: most sentences/s at --concurrency; latency: lowest p99 at --rate",
    )
    parser.add_argument(
        "--max-p99", type=float, metavar="MS", help="refuse settings whose p99 is above this"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="closed-loop clients per trial (16)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="with --target latency: requests/s offered (default: 60%% of the defaults' "
        "measured capacity)",
    )
    parser.add_argument("--budget", default="5m", help="time for the whole search (5m)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per trial (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each (2)")
    parser.add_argument("--quiet", action="store_true", help="no line per trial")


def options_from(args: argparse.Namespace) -> TuneOptions:
    if args.concurrency < 1 or args.duration <= 0 or args.warmup < 0:
        raise InvalidInput("--concurrency and --duration must be positive, --warmup not negative")
    if args.rate is not None:
        if args.target != "latency":
            raise InvalidInput(
                "--rate is the load of --target latency; throughput uses --concurrency"
            )
        parse_levels(str(args.rate), "--rate")
    if args.max_p99 is not None and args.max_p99 <= 0:
        raise InvalidInput("--max-p99 must be positive (milliseconds)")
    return TuneOptions(
        output=args.output,
        overwrite=args.overwrite,
        texts=args.texts,
        text_field=args.text_field,
        words=words_from(args),
        mix=RequestMix.parse(args.inputs_per_request),
        target=args.target,
        max_p99_ms=args.max_p99,
        concurrency=args.concurrency,
        rate=args.rate,
        budget_seconds=parse_budget(args.budget),
        duration=args.duration,
        warmup=args.warmup,
        progress=not args.quiet,
    )
