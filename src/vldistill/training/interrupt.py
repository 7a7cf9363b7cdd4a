"""Stop signals: Ctrl-C (SIGINT) and a cluster's preemption (SIGTERM) end a run at a step boundary.

While :class:`StopSignals` is active, the first SIGINT or SIGTERM only records the request; the
training loop asks :meth:`StopSignals.requested` after each optimizer step, saves a checkpoint and
raises :class:`Interrupted`, whose exit status is the shell's convention for a death by that signal
(128 + its number: 130 for SIGINT, 143 for SIGTERM), so ``vldistill train ... && vldistill eval ...``
stops there. A second signal does not wait: it raises :class:`StopSignal` at once (checkpoints are
written atomically, so nothing published is lost).

Outside a training loop the command line (``vldistill.cli.main``) makes both signals raise
:class:`StopSignal` (:func:`raise_on_stop_signals`): a ``KeyboardInterrupt`` that knows its signal,
so that SIGTERM, whose default is to kill the process without a word, also ends any command with one
``interrupted ...`` line and status 143.

Under DDP every rank receives the signal, but not necessarily before the same step: the ranks agree
on the largest signal seen (an all-reduce of one integer per step), so all of them save and stop
at the same step instead of one waiting forever for the others' gradients.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from vldistill.errors import VldistillError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(VldistillError):
    """A command stopped on SIGINT or SIGTERM: exit status 128 + the signal's number.

    ``step`` is the training step whose checkpoint was saved before stopping (``None``: stopped
    outside a training loop); ``hint`` says how to continue, and is set by the command line, which
    knows the command (``vldistill train``: ``--resume``; ``vldistill protocol``: rerun it).

    >>> str(Interrupted(signal.SIGTERM, step=12, hint="continue with --resume"))
    'interrupted at step 12 (SIGTERM); continue with --resume'
    >>> Interrupted(signal.SIGINT).exit_code, str(Interrupted(signal.SIGINT))
    (130, 'interrupted (SIGINT)')
    """

    def __init__(self, signum: int, *, step: int | None = None, hint: str = "") -> None:
        self.signum, self.step, self.hint = signum, step, hint
        self.exit_code = 128 + signum
        at = "" if step is None else f" at step {step}"
        super().__init__(f"interrupted{at} ({signal.Signals(signum).name})" + (f"; {hint}" if hint else ""))

    def __reduce__(self):
        """Pickles (across ``protocol --jobs`` worker processes) with its keyword arguments kept."""
        return _rebuild_interrupted, (self.signum, self.step, self.hint)

    def with_hint(self, hint: str) -> Interrupted:
        """The same interruption, saying how to continue (``hint``; ``""``: nothing continues)."""
        return Interrupted(self.signum, step=self.step, hint=hint)


def _rebuild_interrupted(signum: int, step: int | None, hint: str) -> Interrupted:
    return Interrupted(signum, step=step, hint=hint)


class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM raised where the program stands (a ``KeyboardInterrupt``, so clean-ups run as for Ctrl-C).

    ``signum`` is the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop_signal(signum: int, _frame: FrameType | None) -> None:
    raise StopSignal(signum)


def raise_on_stop_signals() -> dict[int, Any]:
    """Make SIGINT and SIGTERM raise :class:`StopSignal` in the main thread; returns the previous handlers.

    For the command line: SIGTERM's default would end the process silently (status -15 to a parent
    process), SIGINT's a plain ``KeyboardInterrupt`` that does not say which signal came.
    Restore the returned handlers with :func:`restore_handlers`. Outside the main thread (where Python
    cannot install handlers) it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_stop_signal) for signum in STOP_SIGNALS}


def restore_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers that :func:`raise_on_stop_signals` returned."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoader workers: Ctrl-C is the main process's to handle.

    The terminal sends Ctrl-C to the whole process group, and a worker that dies of it would make the
    main process fail on its next batch instead of finishing the step and saving. SIGTERM keeps its
    default (even where the command line's :func:`raise_on_stop_signals` was inherited through fork):
    Python's multiprocessing ends workers with it when the main process exits, and a worker that
    ignored it would keep the main process waiting forever. (A SIGTERM sent to the whole process
    group, as Slurm does, therefore ends a run with ``train.num_workers > 0`` at its last periodic
    checkpoint rather than at the next step.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def die_with_parent() -> None:
    """Ask the kernel to end this process with SIGTERM when its parent process dies (Linux only).

    For worker processes (a protocol's ``--jobs`` pool): a parent killed with SIGKILL (the OOM killer, a
    scheduler's hard kill) cannot stop its workers, which would otherwise train on as orphans, holding
    the cores and writing into run folders nobody reads. ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (man 2
    prctl); if the parent died before the call (re-parented already), the process ends at once. A
    worker's SIGTERM must keep its default action (see :func:`ignore_stop_signals`): it dies without
    saving, its run resumes from its last periodic checkpoint when the protocol is run again.
    Elsewhere (not Linux, no libc) it does nothing.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG (linux/prctl.h)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died between fork and prctl
        os.kill(os.getpid(), signal.SIGTERM)


def worker_init(_worker_id: int = 0) -> None:
    """Initializer of a protocol's worker processes: :func:`ignore_stop_signals` and :func:`die_with_parent`."""
    ignore_stop_signals()
    die_with_parent()


class StopSignals:
    """Records SIGINT / SIGTERM while active (a context manager); restores the previous handlers on exit.

    Outside the main thread (where Python cannot install handlers) it is inert.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum:
            raise StopSignal(signum)
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, accelerator: Any = None) -> int:
        """The signal to stop on (0: none), agreed by all processes of ``accelerator`` when there are several."""
        if accelerator is None or accelerator.num_processes == 1:
            return self.signum
        import torch  # here: the command line imports this module before any command, torch only for one

        seen = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.reduce(seen, reduction="max").item())
