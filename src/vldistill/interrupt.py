"""Stop signals: Ctrl-C (SIGINT) and a cluster's preemption (SIGTERM) end a run at a step boundary.

While :class:`StopSignals` is active, the first SIGINT or SIGTERM only records the request; the
training loop asks :meth:`StopSignals.requested` after each optimizer step, saves a checkpoint and
raises :class:`Interrupted`, whose exit status is the shell's convention for a death by that signal
(128 + its number: 130 for SIGINT, 143 for SIGTERM), so ``vldistill train ... && vldistill eval ...``
stops there. A second signal does not wait: it raises ``KeyboardInterrupt`` at once (checkpoints are
written atomically, so nothing published is lost).

Under DDP every rank receives the signal, but not necessarily before the same step: the ranks agree
on the largest signal seen (an all-reduce of one integer per step), so all of them save and stop
at the same step instead of one waiting forever for the others' gradients.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

from vldistill.errors import VldistillError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(VldistillError):
    """The run stopped on a signal after saving a checkpoint: exit status 128 + the signal's number."""

    def __init__(self, step: int, signum: int, resume_hint: str = "continue with --resume") -> None:
        self.step, self.signum = step, signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted at step {step} ({signal.Signals(signum).name}); {resume_hint}")


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoader workers: Ctrl-C is the main process's to handle.

    The terminal sends Ctrl-C to the whole process group, and a worker that dies of it would make the
    main process fail on its next batch instead of finishing the step and saving. SIGTERM keeps its
    default: Python's multiprocessing ends workers with it when the main process exits, and a worker
    that ignored it would keep the main process waiting forever. (A SIGTERM sent to the whole process
    group, as Slurm does, therefore ends a run with ``train.num_workers > 0`` at its last periodic
    checkpoint rather than at the next step.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopSignals:
    """Records SIGINT / SIGTERM while active (a context manager); restores the previous handlers on exit.

    Outside the main thread (where Python cannot install handlers) it is inert.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum:
            raise KeyboardInterrupt
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
        seen = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.reduce(seen, reduction="max").item())
