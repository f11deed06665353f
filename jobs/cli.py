"""The `sdfleet` command line: run, validate, plan (of job files or Deforum settings files),
import-deforum, demo, and the commands other installed
packages contribute (`sdfleet bench`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdfleet.batch.errors import PipelineError, SdfleetError
from sdfleet.jobs.deforum_cli import (
    add_deforum_arguments,
    add_import_parser,
    cmd_import_deforum,
    load_cli_job,
)
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_CRASH, EXIT_OK, EXIT_ROWS_FAILED

logger = logging.getLogger("sdfleet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdfleet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_verbosity(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a batch or animation job")
    run.add_argument("job", type=Path)
    run.add_argument("--out", help="output folder or URI (default out/<job name>)")
    run.add_argument("--executor", choices=["ray", "local"], help="override the job's executor")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--json", action="store_true", help="print the run's summary (summary.json) to stdout"
    )
    run.add_argument(
        "--allow-row-errors",
        action="store_true",
        help="exit 0 even when some rows failed (they stay in the summary); for "
        "schedulers that would otherwise retry a finished job",
    )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="batch jobs: make again the rows whose result is an error (e.g. after fixing "
        "the manifest); ok rows are kept",
    )
    validate = sub.add_parser("validate", help="check a job and its manifest without running")
    validate.add_argument("job", type=Path)
    plan = sub.add_parser("plan", help="print an animation job's per-frame plan")
    plan.add_argument("job", type=Path)
    plan.add_argument("--json", action="store_true", help="JSON Lines, one object per frame")
    add_report_commands(sub, plan)
    add_deforum_arguments(run, validate, plan)  # a Deforum settings file is a job too
    add_import_parser(sub)
    demo = sub.add_parser("demo", help="run the demo on builtin:tiny (no network)")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--executor", choices=["ray", "local"], default=None)
    add_contributed_commands(sub)
    for command in sub.choices.values():  # `sdfleet run job.yaml -q` as well as `sdfleet -q run`
        add_verbosity(command, default=argparse.SUPPRESS)
    return parser


def add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    """-v / -q on `parser`; a sub-command's SUPPRESS default leaves the main parser's value
    unless the flag is given after the sub-command. One a contributed command already
    defines is its own."""
    for flags, dest, text in (
        (("-v", "--verbose"), "verbose", "debug logging"),
        (("-q", "--quiet"), "quiet", "errors only: no progress bar, no lines after the run"),
    ):
        try:
            parser.add_argument(*flags, dest=dest, action="store_true", default=default, help=text)
        except argparse.ArgumentError:
            pass


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdfleet")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


COMMAND_GROUP = "sdfleet.commands"


def add_report_commands(sub, plan) -> None:
    """`sdfleet expand`, `sdfleet report` and `plan --plot` (jobs/expand.py, report.py, plot.py)."""
    from sdfleet.jobs import expand, plot, report

    expand.register(sub)
    report.register(sub)
    plot.add_plot_argument(plan)


def add_contributed_commands(sub) -> None:
    """Sub-commands that installed packages contribute through the `sdfleet.commands`
    entry-point group (`sdfleet bench` comes from the benchmark harness, `sdfleet.bench`):
    each entry is a function that adds its parser to `sub` and sets a `handler(args) -> int`.
    One that cannot be loaded is left out with a warning; the built-in commands still run."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMAND_GROUP):
        try:
            register = entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken add-on must not break `sdfleet run`
            logger.warning("command %r (%s) left out: %s", entry.name, entry.value, exc)
            continue
        register(sub)


def main(argv: list[str] | None = None, actor_class: type | None = None) -> int:
    """Run one command; the exit status. `actor_class`: the batch replica actor (default
    `batch.actor.GenerateBatch`); tests and benchmarks pass a subclass."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v and -q: give one of them")
    args.actor_class = actor_class
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    plain_terminal()
    with sigterm_as_interrupt():
        return run_command(args)


def run_command(args) -> int:
    commands = {
        "run": cmd_run,
        "validate": cmd_validate,
        "plan": cmd_plan,
        "demo": cmd_demo,
        "import-deforum": cmd_import_deforum,
    }
    try:
        handler = commands.get(args.command) or args.handler  # a contributed command
        return handler(args)
    except PipelineError as exc:
        print(f"sdfleet: stopped: {exc}", file=sys.stderr)
        return EXIT_CRASH
    except SdfleetError as exc:
        print(f"sdfleet: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("sdfleet: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_CRASH


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job, `kill`) takes the path Ctrl-C takes: statuses
    written, exit 1, resumable. The handler before is back once the command returns."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (a caller running main() in a thread)
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def plain_terminal() -> None:
    """NO_COLOR (https://no-color.org), or stderr that is not a terminal: no colour codes,
    Ray's log prefixes included (Ray reads RAY_COLOR_PREFIX as each line is printed)."""
    if os.environ.get("NO_COLOR") or not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def output_mode(args) -> str:
    """What `run` prints after the run: the summary as JSON, nothing, or the lines."""
    return "json" if args.json else "quiet" if args.quiet else "text"


def cmd_validate(args) -> int:
    job = load_cli_job(args)
    if job.kind == "animation":
        from sdfleet.jobs.anim_runner import validate_animation_job

        frames = validate_animation_job(job, args.job)
        print(f"{args.job}: ok (animation, {frames} frames)")
        return EXIT_OK
    from sdfleet.jobs.runner import prepare_batch_job

    prepared = prepare_batch_job(job, args.job, None)
    print(
        f"{args.job}: ok ({len(prepared.files)} manifest file(s), "
        f"{prepared.expected_outputs} outputs)"
    )
    return EXIT_OK


def cmd_plan(args) -> int:
    from sdfleet.anim.plan import format_table, plan_to_jsonl
    from sdfleet.jobs.anim_runner import plan_animation_job

    job = load_cli_job(args)
    if job.kind != "animation":
        print(
            f"sdfleet: error: {args.job} is a {job.kind} job; `plan` is for animation jobs",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    frames = plan_animation_job(job, args.job)
    if args.plot:
        from sdfleet.jobs.plot import write_plan_plot

        write_plan_plot(frames, args.plot, str(args.job))
    sys.stdout.write(plan_to_jsonl(frames) if args.json else format_table(frames) + "\n")
    return EXIT_OK


def cmd_run(args) -> int:
    job = load_cli_job(args)
    if job.kind == "animation":
        from sdfleet.jobs.anim_runner import run_animation_job

        status = run_animation_job(
            job,
            args.job,
            args.out,
            args.executor,
            args.address,
            show_progress=show_progress(args),
            output=output_mode(args),
        )
    else:
        from sdfleet.batch.actor import GenerateBatch
        from sdfleet.jobs.runner import run_batch

        status = run_batch(
            job,
            args.job,
            args.out,
            args.executor or job.executor,
            args.address,
            show_progress=show_progress(args),
            actor_class=args.actor_class or GenerateBatch,
            retry_errors=args.retry_errors,
            output=output_mode(args),
        )
    return EXIT_OK if status == EXIT_ROWS_FAILED and args.allow_row_errors else status


def show_progress(args) -> bool:
    return not (args.no_progress or args.quiet)


def cmd_demo(args) -> int:
    from sdfleet.jobs.demo import run_demo

    return run_demo(Path(args.out), args.executor)


if __name__ == "__main__":
    sys.exit(main())
