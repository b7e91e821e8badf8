"""``embedloom`` on the command line. Thin: parse, build ``Settings``, call the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from embedloom._version import __version__
from embedloom.config import Settings, SettingsError, SettingSpec, setting_specs
from embedloom.errors import EmbedloomError

__all__ = ["main"]

logger = logging.getLogger("embedloom.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="embedloom",
        description="Serve sentence-embedding models with concurrency done right.",
    )
    parser.add_argument("--version", action="version", version=f"embedloom {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the HTTP server (OpenAI /v1/embeddings, TEI /embed)",
        description="Run the HTTP server. Every flag can also be set as EMBEDLOOM_<FLAG>.",
    )
    doctor = commands.add_parser(
        "doctor",
        help="show the concurrency picture of this machine and configuration",
        description="Report cores, thread pools, the sharing plan for the given flags, and "
        "problems with their fixes. Exits 1 when it finds an error.",
    )
    for command in (serve, doctor):
        for spec in setting_specs():
            _add_setting(command, spec)
        _add_config_flag(command)
    _add_ray_flags(serve, "replica", default_cpus=1.0)
    embed = commands.add_parser(
        "embed",
        help="embed a file of texts into a Parquet or .npy file (bounded memory, resumable)",
        description="Embed INPUT (.txt lines, .jsonl, .csv, .parquet, or - for stdin) into "
        "OUTPUT (.parquet or .npy), in input order, in memory that does not grow with the "
        "input. Takes the model and sharing flags of serve.",
    )
    embed.add_argument("input", metavar="INPUT")
    embed.add_argument("-o", "--output", required=True, type=Path, metavar="OUTPUT")
    embed.add_argument("--field", default="text", help="JSONL field to embed (default: text)")
    embed.add_argument("--id-field", help="JSONL field copied to the output as the row's id")
    embed.add_argument("--column", help="CSV/Parquet column to embed (default: --field)")
    embed.add_argument(
        "--output-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="how vectors are stored (the model's own arithmetic is --dtype)",
    )
    embed.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="a bad row stops the job (default), or is written to OUTPUT.rejects.jsonl",
    )
    embed.add_argument("--resume", action="store_true", help="continue an interrupted run")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing output")
    embed.add_argument("--processes", type=int, default=1, help="worker processes (spawned)")
    embed.add_argument(
        "--chunk-size", type=int, default=1024, help="rows per chunk (at least one batch)"
    )
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_ray_flags(embed, "actor", default_cpus=0.5)
    for spec in setting_specs():
        if spec.name in _ENGINE_SETTINGS:
            _add_setting(embed, spec)
    _add_config_flag(embed)
    pull = commands.add_parser(
        "pull",
        help="fetch a Hugging Face model into the store ahead of time",
        description="Fetch MODEL (org/name[@revision]) into the model store, asking the hub "
        "where the revision points now. For images and air-gapped machines.",
    )
    pull.add_argument("reference", metavar="MODEL", help="org/name or org/name@revision")
    variants = commands.add_parser(
        "variants",
        help="show which variant serves each model and why; build the slow ones",
        description="Show each model's variant trial on this machine: every variant's "
        "accuracy-gate figures and speed, and the one that serves. --build builds the "
        "variants too slow to build at a server's start (int8 OpenVINO: minutes), so the "
        "next start tries them; --retry runs the trial again (after a hardware or library "
        "change).",
    )
    variants.add_argument(
        "--build", action="store_true", help="build the slow-to-build variants first"
    )
    variants.add_argument(
        "--retry", action="store_true", help="forget this machine's trial and run it again"
    )
    for spec in setting_specs():
        if spec.name in _VARIANT_SETTINGS:
            _add_setting(variants, spec)
    _add_config_flag(variants)
    bench = commands.add_parser(
        "bench",
        help="load-test an embedding server (OpenAI, TEI or Cohere API) and report",
        description="Send the same workload to each URL (embedloom, TEI, Infinity, vLLM, a "
        "hosted endpoint) at each concurrency or rate, servers interleaved in rounds, and "
        "report sentences/s, tokens/s, latency percentiles, errors, and the load "
        "generator's own CPU.",
    )
    from embedloom.bench.flags import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    tune = commands.add_parser(
        "tune",
        help="find the fastest settings for this machine and your texts; write a config file",
        description="Try the settings that matter (backend variant under the accuracy gate, "
        "sharing, worker processes, batch token budget and overhead, queue-wait target), one "
        "at a time from the defaults, each on a real server under load with your texts, "
        "within --budget; keep a change only when it beats the best so far by more than the "
        "noise measured between two runs of the defaults; write the result for "
        "'serve --config'.",
    )
    from embedloom.tune.flags import add_arguments as add_tune_arguments

    add_tune_arguments(tune)
    for spec in setting_specs():
        if spec.name in _TUNE_SETTINGS:
            _add_setting(tune, spec)
    _add_config_flag(tune)
    models = commands.add_parser(
        "models",
        help="list the models in the store with their sizes",
        description="List every model snapshot in the store, with its revisions and size.",
    )
    store_specs = [spec for spec in setting_specs() if spec.name in _STORE_SETTINGS]
    for command in (pull, models):
        for spec in store_specs:
            _add_setting(command, spec)
    return parser


def _add_ray_flags(parser: argparse.ArgumentParser, unit: str, *, default_cpus: float) -> None:
    parser.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run on a Ray cluster (needs the 'ray' extra): its address, or none to join "
        "the cluster in RAY_ADDRESS or start a local one",
    )
    count = 2 if unit == "actor" else 1
    parser.add_argument(
        f"--ray-{unit}s",
        type=int,
        default=count,
        metavar="N",
        help=f"with --ray: how many {unit}s (default {count})",
    )
    parser.add_argument(
        "--ray-cpus",
        type=float,
        default=default_cpus,
        metavar="CPUS",
        help=f"with --ray: CPUs each {unit} reserves (default {default_cpus:g}); its engine "
        "runs on the whole part of it, at least one thread",
    )


# The settings the store commands take; the rest are the server's.
_STORE_SETTINGS = ("home", "log_level")
# The settings of the engine (the batch job takes these, not the server's).
_ENGINE_SETTINGS = (
    "model",
    "home",
    "offline",
    "backend",
    "dtype",
    "max_batch_tokens",
    "max_batch_size",
    "batch_overhead_tokens",
    "sharing",
    "replicas",
    "threads",
    "log_level",
    "log_format",
)


# What decides a model's variant trial.
_VARIANT_SETTINGS = (
    "model",
    "home",
    "offline",
    "backend",
    "dtype",
    "sharing",
    "replicas",
    "threads",
    "log_level",
    "log_format",
)


# The model to tune and where the store is: the rest is what tune searches.
_TUNE_SETTINGS = ("model", "home", "offline", "log_level", "log_format")


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file of settings with the flags' names, a [models.NAME] table per "
        "model (flags and EMBEDLOOM_* variables win over it; default: none)",
    )


def _add_setting(parser: argparse.ArgumentParser, spec: SettingSpec) -> None:
    help_text = f"{spec.help} (default: {spec.default_text}; env {spec.env_var})"
    if spec.kind is bool:
        parser.add_argument(
            spec.flag,
            dest=spec.name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=help_text,
        )
        return
    if spec.kind is tuple:
        parser.add_argument(
            spec.flag,
            dest=spec.name,
            action="append",
            default=None,
            help=f"{spec.help} (env {spec.env_var})",
            metavar="VALUE",
        )
        return
    parser.add_argument(
        spec.flag,
        dest=spec.name,
        type=_parser_for(spec),
        default=None,
        help=help_text,
        choices=spec.choices,
        metavar=None if spec.choices else spec.kind.__name__.upper(),
    )


def _parser_for(spec: SettingSpec) -> Callable[[str], object]:
    def parse(raw: str) -> object:
        try:
            return spec.parse(raw)
        except SettingsError as exc:
            # argparse names the flag itself ("argument --port: …").
            message = str(exc).removeprefix(f"{spec.env_var}: ")
            raise argparse.ArgumentTypeError(message.replace(spec.env_var, spec.flag)) from exc

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one ``embedloom: …`` line naming the fix (exit 2),
    not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"embedloom: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    flags = {spec.name: getattr(args, spec.name, None) for spec in setting_specs()}
    try:
        config = getattr(args, "config", None)
        if config is not None:
            settings = Settings.from_file(config, os.environ, **flags)
        else:
            settings = Settings.from_env(os.environ, **flags)
    except SettingsError as exc:
        parser.error(str(exc))
    from embedloom.log import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        return _COMMANDS[args.command](settings, args)
    except (EmbedloomError, SettingsError, ValueError) as exc:
        return _refuse(str(exc))
    except OSError as exc:  # a path the user gave: missing, unreadable, unwritable
        where = f"{exc.filename}: " if exc.filename else ""
        return _refuse(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        print("embedloom: interrupted", file=sys.stderr)
        return 130


def _refuse(message: str) -> int:
    # The cause's traceback is for whoever debugs embedloom, not for the user.
    logger.debug("refused", exc_info=True)
    print(f"embedloom: {message}", file=sys.stderr)
    return 2


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.doctor import run_doctor

    text, failed = run_doctor(settings, os.environ)
    print(text, end="")
    return 1 if failed else 0


def _embed(settings: Settings, args: argparse.Namespace) -> int:
    # A job embeds with one model: the first one named (a config file's first
    # table, or the one --model names), with its own settings.
    settings = settings.for_model(settings.models[0].name)
    if args.ray:
        return _embed_on_ray(settings, args)
    from embedloom.batch import JobOptions, run_job

    options = JobOptions(
        input=args.input,
        output=args.output,
        field=args.field,
        id_field=args.id_field,
        column=args.column,
        output_dtype=args.output_dtype,
        on_error=args.on_error,
        resume=args.resume,
        overwrite=args.overwrite,
        processes=args.processes,
        chunk_size=args.chunk_size,
        quiet=args.quiet,
        settings=settings,
    )
    print(run_job(options).line())
    return 0


def _embed_on_ray(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.distributed.batch import RayJobOptions
    from embedloom.distributed.jobs import embed_on_ray

    _refuse_what_ray_ignores(args)
    options = RayJobOptions(
        source=Path(args.input),
        output=str(args.output),
        field=args.field,
        id_field=args.id_field,
        column=args.column,
        on_error=args.on_error,
        chunk_rows=args.chunk_size,
        actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus,
        overwrite=args.overwrite,
        resume=args.resume,
        quiet=args.quiet,
    )
    summary = embed_on_ray(options, settings, address=None if args.ray == "auto" else args.ray)
    print(summary.line())
    return 0


def _refuse_what_ray_ignores(args: argparse.Namespace) -> None:
    """``embed --ray`` reads files and writes a Parquet dataset directory of float32
    vectors: a flag asking for anything else is refused rather than silently not
    done."""
    unsupported = [
        (args.input == "-", "stdin (the actors read files: give a file or a directory)"),
        (args.output.suffix == ".npy", f"a .npy output ({args.output}); give a directory"),
        (args.output_dtype != "float32", f"--output-dtype {args.output_dtype}"),
        (args.processes != 1, "--processes (--ray-actors sets the parallelism)"),
    ]
    refused = [what for asked, what in unsupported if asked]
    if refused:
        raise EmbedloomError(
            f"embed --ray does not support {'; '.join(refused)}: drop it, or run without --ray"
        )


def _pull(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.store import ModelStore

    repo_id, _, revision = args.reference.strip().partition("@")
    store = ModelStore.for_settings(settings)
    print(store.fetch(repo_id, revision or None, refresh=True))
    return 0


def _variants(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.variants.command import run_variants_command

    print(run_variants_command(settings, build=args.build, retry=args.retry), end="")
    return 0


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.bench.command import run_bench
    from embedloom.bench.flags import options_from

    print(run_bench(options_from(args), args.argv[1:]))
    return 0


def _tune(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.tune.command import run_tune
    from embedloom.tune.flags import options_from

    print(run_tune(settings, options_from(args)))
    return 0


def _models(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.store import ModelStore, packaged_models

    store = ModelStore.for_settings(settings)
    print(f"{'MODEL':<40} {'REVISIONS':<16} {'COMMIT':<12} {'SIZE':>10}  PATH")
    for model in [*packaged_models(), *store.list()]:
        print(
            f"{model.repo_id:<40} {','.join(model.revisions) or '-':<16} "
            f"{model.commit[:12] or '-':<12} {model.size_bytes / 1e6:>8.1f}MB  {model.path}"
        )
    if not store.list():
        print(f"(no models in the store {store.models} yet: `embedloom pull ORG/NAME` adds one)")
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from embedloom.server.guard import load_api_keys, warn_if_exposed
    from embedloom.server.listen import bind_listener, check_address_free

    load_api_keys(settings)  # an unreadable key file fails here, not in N workers
    if args.ray:
        check_address_free(settings.host, settings.port)  # Serve's proxy binds it later
        warn_if_exposed(settings)
        from embedloom.distributed.jobs import serve_on_ray

        serve_on_ray(
            settings,
            address=None if args.ray == "auto" else args.ray,
            replicas=args.ray_replicas,
            cpus_per_replica=args.ray_cpus,
        )
        return 0
    # First of all, before any model is loaded: a port in use is one line at once.
    listener = bind_listener(settings.host, settings.port)
    warn_if_exposed(settings)
    if settings.workers > 1 or settings.preload:
        from embedloom.server.workers import serve_workers

        serve_workers(settings, listener=listener)
    else:
        from embedloom.server import serve

        serve(settings, listener=listener)
    return 0


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "bench": _bench,
    "doctor": _doctor,
    "embed": _embed,
    "models": _models,
    "pull": _pull,
    "serve": _serve,
    "tune": _tune,
    "variants": _variants,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
