"""The ``vldistill`` command: a thin layer over the library.

Every user-facing error (``VldistillError``) is printed as one line on stderr with exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from vldistill.errors import VldistillError

app = typer.Typer(
    name="vldistill",
    help="Knowledge distillation for vision-language models: CLIP-TD, MAD, DiDE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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


def main() -> None:
    import os

    # transformers' load reports (e.g. a MiniLM pooler a teacher does not use) are noise for users of
    # the command line; VLDISTILL_VERBOSE=1 shows them.
    if not os.environ.get("VLDISTILL_VERBOSE"):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app(standalone_mode=False)
    except VldistillError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except SystemExit:
        raise
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(2)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        raise
