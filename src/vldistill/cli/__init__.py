"""The ``vldistill`` command: a thin layer over the library.

Every user-facing error (``VldistillError``) and every usage error (an unknown command or option, a
missing argument) is printed on stderr as ``error: ...`` lines, one per defect, with exit status 2; anything
else is a bug and keeps its traceback. ``vldistill`` alone, or a command group alone (``vldistill data``),
prints its help and exits with status 2, as click does for a group called without a command (click >= 8.2).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vldistill.errors import VldistillError

app = typer.Typer(
    name="vldistill",
    help="Knowledge distillation for vision-language models: CLIP-TD, MAD, DiDE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
    from vldistill.cli import data, pretrain, protocol, score, train

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


def main() -> None:
    """The console script: run the command; user and usage errors become ``error:`` lines and exit 2."""
    import os

    # transformers' load reports (e.g. a MiniLM pooler a teacher does not use) are noise for users of
    # the command line; VLDISTILL_VERBOSE=1 shows them.
    if not os.environ.get("VLDISTILL_VERBOSE"):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        # Not standalone, so that our errors reach the handlers below; click then *returns* the status
        # of an Exit (--help, --version: 0; Ctrl-C: 130) instead of exiting.
        status = app(standalone_mode=False)
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
    if isinstance(status, int) and status:
        sys.exit(status)
