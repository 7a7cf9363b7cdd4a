"""The ``vldistill`` command: a thin layer over the library.

Every user-facing error (``VldistillError``) and every usage error (an unknown command or option, a
missing argument) is printed on stderr as ``error: ...`` lines, one per defect, with exit status 2; anything
else is a bug and keeps its traceback. ``vldistill`` alone, or a command group alone (``vldistill data``),
prints its help and exits with status 2, as click does for a group called without a command (click >= 8.2).

Ctrl-C (SIGINT) and SIGTERM end every command with one line on stderr, ``interrupted [at step N]
(SIGINT); <how to continue>``, and the status of a death by that signal, 130 or 143, so that
``vldistill train ... && vldistill eval ...`` stops there. A training loop first saves a checkpoint
at the next step boundary (:mod:`vldistill.training.interrupt`); how to continue depends on the command
(:data:`CONTINUE`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from vldistill.errors import VldistillError
from vldistill.training.interrupt import Interrupted, raise_on_stop_signals, restore_handlers

CONTINUE = {
    "train": "continue with --resume",
    "pretrain": "continue with --resume",
    # their runs resume from their own checkpoints and finished ones are skipped, without an option
    "protocol": "rerun the same command to continue",
    "demo": "rerun the same command to continue",
}
"""How an interrupted command continues, by command; the others (plan, eval, cache build...) simply start again."""


class _Commands(TyperGroup):
    """The root group: a command stopped by a signal becomes :class:`Interrupted` with its command's hint.

    Typer turns a ``KeyboardInterrupt`` that leaves a command into a bare exit status 130 (silent, and
    130 for SIGTERM too); catching it here, where the command's name is known, keeps the signal.
    """

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as stop:
            raise stop.with_hint(CONTINUE.get(ctx.invoked_subcommand or "", "")) from None
        except KeyboardInterrupt as stop:
            signum = getattr(stop, "signum", signal.SIGINT)
            raise Interrupted(signum, hint=CONTINUE.get(ctx.invoked_subcommand or "", "")) from None


app = typer.Typer(
    name="vldistill",
    help="Knowledge distillation for vision-language models: CLIP-TD, MAD, DiDE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Commands,
)

# typer vendors click (typer._click) since 0.2x, earlier it imports it: `click.ClickException` matches only
# the latter. The base class of typer's public BadParameter is click's ClickException in either case.
_CLICK_EXCEPTION: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def package_version() -> str:
    """The installed distribution's version (``importlib.metadata``), or a note when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vldistill")
    except PackageNotFoundError:
        return "unknown (not installed; run `pip install -e .`)"


def _show_version(value: bool) -> None:
    if value:
        print(f"vldistill {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", is_eager=True, callback=_show_version)
    ] = False,
) -> None:
    """Options given before the command (``--version``); the app's own help text is the Typer's."""


def _register() -> None:
    from vldistill.cli import data, pretrain, protocol, reference, score, train

    app.add_typer(data.app, name="data")
    app.add_typer(score.app, name="score")
    app.command("train")(train.train_command)
    app.command("plan")(train.plan_command)
    app.command("eval")(train.eval_command)
    app.command("pretrain")(pretrain.pretrain_command)
    app.command("protocol")(protocol.protocol_command)
    app.command("report")(protocol.report_command)
    app.command("demo")(protocol.demo_command)
    app.add_typer(protocol.cache_app, name="cache")
    app.command("config-reference")(reference.config_reference_command)


_register()


def _usage_error_line(err: Exception) -> str | None:
    """The one line of a click usage error (``None`` for a group called bare: its help is the message).

    ``"No such option: --bogus; fix: see 'vldistill train --help'"``
    """
    if type(err).__name__ == "NoArgsIsHelpError":
        return None
    message = " ".join(err.format_message().split()).removesuffix(".")  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else "vldistill"
    return f"{message}; fix: see '{command} --help'"


def _quiet_libraries() -> None:
    """No load reports (e.g. a MiniLM pooler a teacher does not use) and no "Loading weights" bars from transformers.

    Noise for users of the command line, in every command; ``VLDISTILL_VERBOSE=1`` keeps them. The
    environment is what transformers and huggingface_hub read when imported (the commands import them
    later); a caller that imported transformers before (a test, a notebook) is told directly.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()


def main() -> None:
    """The console script: run the command; user and usage errors become ``error:`` lines and exit 2.

    A signal ends it with one ``interrupted ...`` line (rank 0 of a DDP run only) and status 130 / 143.
    """
    if not os.environ.get("VLDISTILL_VERBOSE"):
        _quiet_libraries()
    previous = raise_on_stop_signals()
    try:
        status = _run()
    finally:
        restore_handlers(previous)
    if isinstance(status, int) and status:
        sys.exit(status)


def _run() -> Any:
    """The command's status (``None`` or an int); errors printed, and ``SystemExit`` with their status."""
    try:
        # Not standalone, so that our errors reach the handlers below; click then *returns* the status
        # of an Exit (--help, --version: 0; typer.Exit(code): code) instead of exiting.
        return app(standalone_mode=False)
    except Interrupted as stop:
        if os.environ.get("RANK", "0") == "0":  # every process of a DDP run stops; one says so
            print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    except VldistillError as err:
        for line in err.lines():
            # a message may quote a library's multi-line text (transformers' hub errors): one line each
            print("error: " + " ".join(part.strip() for part in line.splitlines()), file=sys.stderr)
        sys.exit(err.exit_code)
    except _CLICK_EXCEPTION as err:
        line = _usage_error_line(err)
        if line is None:
            # typer has already printed the rich help; plain click leaves it in the message
            help_text = err.format_message()  # type: ignore[attr-defined]
            if help_text:
                print(help_text, file=sys.stderr)
        else:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
