"""The ``ssjobs`` command line: click commands only; what they do lives in
``ssjobs.control`` and ``ssjobs.status``.

Adding a command (``push``, ``dead``, ``top`` ...): decorate it with ``@cli.command(...)`` or
build it elsewhere and ``cli.add_command(cmd)``; give it ``@config_option`` and get the file
with ``config_path(ctx, config)``; return the exit status. Errors: raise a ``SsjobsError``
(printed as one line by :func:`main`, exit 1; a ``ConfigError`` exits 2, as a usage error
does) or print with ``console.output.fail`` and return 1.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from . import __version__
from .config import CONFIG_ENV, DEFAULT_CONFIG_NAME, find_config_path
from .errors import ConfigError, SsjobsError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
CONFIG_HELP = f"Config file [default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG_NAME}]."
EXIT_USAGE = 2      # click's convention for a bad command line; also an invalid config
EXIT_INTERRUPTED = 130


class OrderedGroup(click.Group):
    """Lists commands in the order they were added (lifecycle first), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def version_line() -> str:
    """One line: the version, the Python, the hot loop and the redis-server that
    url = "embedded" would run."""
    from .embedded import version_note
    from .fastloop import IMPLEMENTATION

    return (f"ssjobs {__version__} (Python {platform.python_version()}, fastloop: "
            f"{IMPLEMENTATION}, {version_note()})")


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit(0)


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config`` on a command (it may also come before the command)."""
    return click.option("-c", "--config", "config", metavar="PATH", default=None,
                        help=CONFIG_HELP)(f)


def config_path(ctx: click.Context, value: str | None) -> Path:
    """The command's ``-c``, else the group's ``-c``, else $SSJOBS_CONFIG, else ./ssjobs.toml."""
    root = ctx.find_root()
    return find_config_path(value or (root.obj or {}).get("config"))


@click.group(cls=OrderedGroup, context_settings=CONTEXT, invoke_without_command=True,
             epilog="Exit status (every command): 0 ok; 1 failed; 2 invalid config or usage; "
                    "3 not running (status).")
@click.option("-c", "--config", "config", metavar="PATH", default=None, help=CONFIG_HELP)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print the version and exit.")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> int:
    """ssjobs: background jobs on Linux servers, driven by Redis.

    One master per host forks and supervises the workers of every topic in the config.
    """
    ctx.ensure_object(dict)["config"] = config
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
    return 0


@cli.command("help", short_help="Show this help, or the help of one command.")
@click.argument("command", required=False)
@click.pass_context
def help_cmd(ctx: click.Context, command: str | None) -> int:
    """Show the usage and every command, or the help of COMMAND."""
    parent = ctx.parent or ctx
    if command is None:
        click.echo(parent.get_help())
        return 0
    cmd = cli.get_command(parent, command)
    if cmd is None:
        raise click.UsageError(f"no such command {command!r}", ctx)
    with click.Context(cmd, info_name=command, parent=parent) as sub:
        click.echo(cmd.get_help(sub))
    return 0


@cli.command(short_help="Check the config and start the master (daemon unless --foreground).")
@click.option("--foreground", is_flag=True,
              help="Stay attached (systemd Type=notify, docker, supervisord); logs go to "
                   'log.dir, or to stderr when log.dir is unset or "-".')
@click.option("--wait", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Wait up to S seconds for an unreachable Redis, then give up (default: "
                   "start at once, the workers wait for Redis).")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@config_option
@click.pass_context
def start(ctx: click.Context, foreground: bool, wait: float | None, ready_fd: int | None,
          config: str | None) -> int:
    """Check the config, then start the master. It daemonizes and returns once the master
    reports ready; exit 1 if it failed or is already running (the running pid is printed),
    or at once on a wrong Redis password; 2 for an invalid config."""
    from . import control

    return control.start(config_path(ctx, config), foreground=foreground, ready_fd=ready_fd,
                         wait=wait)


@cli.command(short_help="Graceful stop: in-flight jobs finish; SIGKILL after --timeout.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Seconds before SIGKILL [default: process.stop_timeout + 15].")
@config_option
@click.pass_context
def stop(ctx: click.Context, timeout: float | None, config: str | None) -> int:
    """Stop the master gracefully and wait until it is gone (exit 0 also when not running).
    Needs only process.data_dir from the config."""
    from . import control
    from .config import load_data_dir

    path = config_path(ctx, config)
    data_dir = load_data_dir(path)
    return control.stop(data_dir, control.stop_timeout_for(path) if timeout is None else timeout)


@cli.command(short_help="Stop (if running), then start.")
@config_option
@click.pass_context
def restart(ctx: click.Context, config: str | None) -> int:
    """Stop the master (if running), then start it again; an invalid config is refused
    before anything is stopped."""
    from . import control

    return control.restart(config_path(ctx, config))


@cli.command(short_help="Start if not running, else do nothing (for crontab).")
@config_option
@click.pass_context
def revive(ctx: click.Context, config: str | None) -> int:
    """Start the master if it is not running; silently do nothing if it is."""
    from . import control

    return control.revive(config_path(ctx, config))


@cli.command(short_help="Re-read the config and replace workers one by one (SIGHUP).")
@config_option
@click.pass_context
def reload(ctx: click.Context, config: str | None) -> int:
    """Validate the config, then tell the master to reload it; a bad config is refused and
    the running master keeps its old one."""
    from . import control

    return control.reload(config_path(ctx, config))


@cli.command(short_help="Master, topics and workers; exit 3 when not running.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (docs/reference.md).")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@config_option
@click.pass_context
def status(ctx: click.Context, as_json: bool, watch: bool, config: str | None) -> int:
    """Show the master, topic counters (from Redis) and this host's workers (from the
    scoreboard). Exit 0 when running; 3 when not (the last snapshot is shown)."""
    from .console import statusview

    return statusview.status(config_path(ctx, config), as_json=as_json, watch=watch)


@cli.command(short_help="Validate the config, import consumers, ping Redis.")
@click.option("--notify", is_flag=True, help="Also send a test message through [notifier].")
@config_option
@click.pass_context
def check(ctx: click.Context, notify: bool, config: str | None) -> int:
    """Validate every key of the config, import every consumer in a child process and ping
    every Redis. Exit 0 ok, 2 invalid, 1 the test message (--notify) failed."""

    from . import checks

    return checks.check(config_path(ctx, config), notify=notify)


# -- operator console: push, dead, top (logic in ssjobs.console) ---------------------------

@cli.command(short_help="Enqueue a job (JSON argument) or one job per stdin line.")
@click.argument("topic")
@click.argument("payload", metavar="[JSON]", required=False)
@click.option("--delay", type=click.FloatRange(min=0), default=0.0, metavar="S",
              help="Run no earlier than S seconds from now.")
@click.option("--priority", type=click.IntRange(0, 9), default=0, metavar="N",
              help="0..9: higher runs first (default 0).")
@click.option("--unique-key", metavar="K", default=None,
              help="Push nothing while a job with this key is queued, delayed or running "
                   "(one job only).")
@click.option("--count", is_flag=True, help="Print how many were pushed, not their ids.")
@config_option
@click.pass_context
def push(ctx: click.Context, topic: str, payload: str | None, delay: float, priority: int,
         unique_key: str | None, count: bool, config: str | None) -> int:
    """Push a job to TOPIC: the JSON argument, or one JSON document per line of stdin
    (JSON omitted or "-"). A topic not in the config or any bad line pushes nothing."""
    from .console import push as push_mod

    return push_mod.push(config_path(ctx, config), topic, payload, delay=delay,
                         priority=priority, unique_key=unique_key, count=count)


@cli.group(cls=OrderedGroup, short_help="Inspect, retry or purge dead-lettered jobs.")
def dead() -> None:
    """Dead-lettered jobs of a topic: list, show, retry, purge."""


@dead.command("list", short_help="Newest dead jobs: id, attempts, error, when, worker.")
@click.argument("topic")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              metavar="N", help="Show the N newest.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects.")
@config_option
@click.pass_context
def dead_list(ctx: click.Context, topic: str, limit: int, as_json: bool,
              config: str | None) -> int:
    """List the newest dead-lettered jobs of TOPIC."""
    from .console import dead as dead_mod

    return dead_mod.list_dead(config_path(ctx, config), topic, limit=limit, as_json=as_json)


@dead.command("show", short_help="One dead job: error, full traceback, payload.")
@click.argument("topic")
@click.argument("job_id", metavar="ID")
@config_option
@click.pass_context
def dead_show(ctx: click.Context, topic: str, job_id: str, config: str | None) -> int:
    """Show the dead job ID of TOPIC (any part of the id that only one dead job has will do:
    the short ids of `dead list`); exit 1 if unknown or ambiguous."""
    from .console import dead as dead_mod

    return dead_mod.show(config_path(ctx, config), topic, job_id)


@dead.command("retry", short_help="Requeue dead jobs (all, or --id ...), attempts reset.")
@click.argument("topic")
@click.option("--id", "job_ids", multiple=True, metavar="ID",
              help="Only this job (repeatable); default: every dead job.")
@config_option
@click.pass_context
def dead_retry(ctx: click.Context, topic: str, job_ids: tuple[str, ...],
               config: str | None) -> int:
    """Move dead jobs of TOPIC back to the queue with their attempts reset (the previous
    error is noted in the job's history). An unknown --id requeues nothing (exit 1)."""
    from .console import dead as dead_mod

    return dead_mod.retry(config_path(ctx, config), topic, list(job_ids))


@dead.command("purge", short_help="Delete every dead job of a topic.")
@click.argument("topic")
@click.option("--yes", is_flag=True, help="Do not ask (required when stdin is not a terminal).")
@config_option
@click.pass_context
def dead_purge(ctx: click.Context, topic: str, yes: bool, config: str | None) -> int:
    """Delete the dead jobs of TOPIC, after asking on a terminal unless --yes."""
    from .console import dead as dead_mod

    return dead_mod.purge(config_path(ctx, config), topic, yes=yes)


@cli.group(cls=OrderedGroup, short_help="A tracked job: its state, result, progress; cancel.")
def job() -> None:
    """Jobs of topics with track = true: show, cancel (exit 1 for an unknown id)."""


@job.command("show", short_help="State, attempts, times, progress, result, error.")
@click.argument("topic")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The record as one JSON object.")
@config_option
@click.pass_context
def job_show(ctx: click.Context, topic: str, job_id: str, as_json: bool,
             config: str | None) -> int:
    """Show the record of the tracked job ID of TOPIC."""
    from .console import jobs

    return jobs.show(config_path(ctx, config), topic, job_id, as_json=as_json)


@job.command("cancel", short_help="Queued or delayed: never runs; running: asked to stop.")
@click.argument("topic")
@click.argument("job_id", metavar="ID")
@config_option
@click.pass_context
def job_cancel(ctx: click.Context, topic: str, job_id: str, config: str | None) -> int:
    """Cancel the tracked job ID of TOPIC: one not started yet never runs, a running one
    sees job.cancelled, a finished one is left as it is. Prints what it found."""
    from .console import jobs

    return jobs.cancel(config_path(ctx, config), topic, job_id)


@cli.command(short_help="Live view of topics and workers; q quits.")
@config_option
@click.pass_context
def top(ctx: click.Context, config: str | None) -> int:
    """Full-screen view refreshed every second: per topic backlog, delayed, in flight, dead,
    jobs/s, job-time percentiles and workers; per worker state, job and RSS. q or Ctrl-C
    quits. Without a terminal it prints one plain frame."""
    from .console import top as top_mod

    return top_mod.run(config_path(ctx, config))


@cli.command(short_help="Serve the web dashboard (foreground).")
@click.option("--listen", metavar="HOST:PORT", default=None,
              help="Address to serve [default: [web] listen, else 127.0.0.1:9181]; one that "
                   "is not loopback needs [web] token.")
@config_option
@click.pass_context
def web(ctx: click.Context, listen: str | None, config: str | None) -> int:
    """Serve the dashboard (docs/web.md): topics, hosts and their workers, dead letters with
    retry and purge, tracked jobs, periodic schedules, and the same as JSON under /api/.
    Runs until SIGTERM or Ctrl-C; needs the web extra (pip install 'ssjobs[web]')."""
    from .web import server

    return server.run(config_path(ctx, config), listen=listen)


# -- entry point -----------------------------------------------------------------------------

def _error(message: str, hint: str | None = None) -> None:
    from .redact import redact

    click.echo(f"ssjobs: {redact(message)}", err=True)
    if hint:
        click.echo(f"hint: {redact(hint)}", err=True)


def run(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status. User mistakes become one line on
    stderr (plus a hint), never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="ssjobs", standalone_mode=False)
    except click.UsageError as exc:
        _error(exc.format_message(), hint=f"see `{_command_path(exc)} --help`")
        return EXIT_USAGE
    except click.Abort:
        _error("aborted")
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except ConfigError as exc:
        from .console.output import config_error_lines

        for line in config_error_lines(exc):
            _error(line)
        return EXIT_USAGE
    except SsjobsError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except PermissionError as exc:
        _error(f"permission denied: {exc.filename or exc}",
               hint="run as the user that owns process.data_dir")
        return 1
    except OSError as exc:
        _error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    return rv if isinstance(rv, int) else 0


def _command_path(exc: click.UsageError) -> str:
    return exc.ctx.command_path if exc.ctx is not None else "ssjobs"


def _silence_stdout() -> None:
    """After EPIPE (``ssjobs status | head``), keep the exit-time flush from failing too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``ssjobs`` console script and ``python -m ssjobs``."""
    code = run(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(code)
