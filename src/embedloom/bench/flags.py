"""``bench``'s command line: its flags, and the options they make. Light on
purpose: every ``embedloom`` start builds this parser."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embedloom.bench.api import API_NAMES
from embedloom.bench.workload import ONE_INPUT, RequestMix
from embedloom.errors import InvalidInput

__all__ = [
    "BenchOptions",
    "add_arguments",
    "add_text_arguments",
    "options_from",
    "parse_levels",
    "words_from",
]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    urls: tuple[str, ...]
    api: str = "auto"
    model: str | None = None
    api_key: str | None = None
    texts: str | None = None
    text_field: str = "text"
    words: float | None = None  # mean words of generated texts (None: the default)
    mix: RequestMix = ONE_INPUT
    mode: Literal["closed", "open"] = "closed"
    levels: tuple[float, ...] = (32,)
    duration: float | None = 20.0  # None: --requests
    requests: int | None = None
    warmup: float = 2.0
    rounds: int = 1
    json_path: Path | None = None
    markdown_path: Path | None = None
    chart_path: Path | None = None
    progress: bool = True


def parse_levels(text: str, what: str) -> tuple[float, ...]:
    """``1,8,32`` → (1, 8, 32): a sweep, each level one step."""
    try:
        levels = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput(f"{what} {text!r}: write a number or a list (1,8,32)") from None
    if not levels or min(levels) <= 0:
        raise InvalidInput(f"{what} {text!r}: every value must be positive")
    return levels


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """What to send: a file's texts, or generated ones (``bench`` and ``tune``)."""
    parser.add_argument(
        "--texts", metavar="FILE", help=".txt, .jsonl, .csv or .parquet (default: generated)"
    )
    parser.add_argument(
        "--text-field", default="text", help="the JSON field or column of --texts (text)"
    )
    parser.add_argument(
        "--words",
        type=float,
        metavar="MEAN",
        help="mean words of the generated texts (lognormal: mostly short, a long tail); "
        "default 27, about 30 tokens",
    )


def words_from(args: argparse.Namespace) -> float | None:
    if args.words is not None and not 1 <= args.words <= 2000:
        raise InvalidInput(f"--words {args.words:g}: a mean between 1 and 2000 words")
    return float(args.words) if args.words is not None else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bench``'s flags (``embedloom bench --help``)."""
    parser.add_argument(
        "urls",
        nargs="+",
        metavar="URL",
        help="a server's root URL, or its embedding route; NAME=URL labels it in the reports",
    )
    parser.add_argument(
        "--api",
        choices=("auto", *API_NAMES),
        default="auto",
        help="the dialect (auto: from the URL's path, else the server's /openapi.json or /info)",
    )
    parser.add_argument("--model", help="the model name the OpenAI and Cohere bodies carry")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    add_text_arguments(parser)
    parser.add_argument(
        "--inputs-per-request",
        default="1",
        metavar="MIX",
        help="inputs in each request: 8, or sizes with weights: 1:70,8:20,64:10 (1)",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        metavar="N[,N…]",
        help="closed loop: clients each sending their next request when answered (32); a "
        "list is a sweep",
    )
    load.add_argument(
        "--rate",
        metavar="R[,R…]",
        help="open loop: requests started per second, answered or not; a list is a sweep",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, help="seconds measured per step (20)")
    length.add_argument("--requests", type=int, help="requests measured per step")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds sent, not measured, first (2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every step, servers interleaved (1)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every sample here")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the table here")
    parser.add_argument(
        "--chart", type=Path, metavar="FILE.png", help="throughput and latency against the load"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def options_from(args: argparse.Namespace) -> BenchOptions:
    if args.rounds < 1 or (args.requests is not None and args.requests < 1):
        raise InvalidInput("--rounds and --requests must be at least 1")
    if (args.duration is not None and args.duration <= 0) or args.warmup < 0:
        raise InvalidInput("--duration must be positive and --warmup not negative")
    mode: Literal["closed", "open"] = "open" if args.rate else "closed"
    levels = (
        parse_levels(args.rate, "--rate")
        if args.rate
        else (parse_levels(args.concurrency, "--concurrency") if args.concurrency else (32.0,))
    )
    if mode == "closed" and any(level != int(level) for level in levels):
        raise InvalidInput(f"--concurrency {args.concurrency}: clients are whole numbers")
    return BenchOptions(
        urls=tuple(args.urls),
        api=args.api,
        model=args.model,
        api_key=args.api_key,
        texts=args.texts,
        text_field=args.text_field,
        words=words_from(args),
        mix=RequestMix.parse(args.inputs_per_request),
        mode=mode,
        levels=levels,
        duration=(args.duration or 20.0) if args.requests is None else None,
        requests=args.requests,
        warmup=args.warmup,
        rounds=args.rounds,
        json_path=args.json,
        markdown_path=args.markdown,
        chart_path=args.chart,
        progress=not args.quiet and sys.stderr.isatty(),
    )
