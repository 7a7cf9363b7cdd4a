"""Running a protocol's cells: one after another in this process, or up to N at once in their own processes.

The :class:`Matrix` lists the cells in protocol order (task, condition, method entry, seed) with the runs
each one needs (its ``run:`` teacher references) and says which may start: a cell that is not done
whose needed runs have finished. :func:`run_cells` trains them: with ``jobs == 1`` in this process (the
progress bars work, nothing is spawned); with more, in a pool of ``jobs`` worker processes started with
``spawn`` (a fresh interpreter: no state shared with this one or another run), each run on its share
of the cores (``train.threads`` if set, else cores // jobs: one thread each for two jobs on two cores,
as the demo runs; two OpenMP pools spin-waiting on shared cores are far slower); as with any ``spawn``, a
script that starts them must guard its entry point (``if __name__ == "__main__":``), which the
``vldistill`` command and ``python -m vldistill`` do. Only this process writes
``results.jsonl``: a run's rows are appended when it finishes, so an interrupted protocol continues
where it stopped (finished runs are skipped, unfinished ones resume from their last checkpoint).

A run that fails stops the protocol: no new run starts, the runs in flight finish (their rows are
kept), then the failed run's own error is raised (one line for a ``VldistillError``). Ctrl-C stops the
runs in flight at their next step (each saves a checkpoint; one still setting up just stops; idle
workers ignore it) and ends the protocol with ``KeyboardInterrupt`` (exit status 130). Workers die with
this process if it is killed outright (SIGKILL: :func:`~vldistill.training.interrupt.die_with_parent`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vldistill.errors import ConfigError
from vldistill.protocol.runner import (
    Condition,
    ProtocolConfig,
    RunKey,
    append_rows,
    console,
    experiment,
    rows_of,
    run_dir,
    run_reference,
    run_references,
)
from vldistill.training.interrupt import worker_init

if TYPE_CHECKING:
    from vldistill.config import ExperimentConfig


@dataclass(frozen=True)
class RunCell:
    """One run of the matrix and the runs (same task) whose ``final/`` students its teachers are."""

    task: str
    condition: Condition
    label: str
    seed: int
    needs: frozenset[RunKey] = frozenset()

    @property
    def key(self) -> RunKey:
        return self.task, self.condition.name, self.label, self.seed

    @property
    def name(self) -> str:
        return f"{self.task} {self.condition.name} {self.label} seed {self.seed}"


@dataclass
class Matrix:
    """The cells in protocol order, which are done, which have started; ``ready()`` says what may start."""

    cells: list[RunCell]
    finished: set[RunKey]
    started: set[RunKey] = field(default_factory=set)

    @classmethod
    def of(cls, spec: ProtocolConfig, out: Path, done: set[RunKey]) -> Matrix:
        """The matrix of ``spec``; ``done``: the runs ``results.jsonl`` already holds.

        Every cell still to run has its config checked (``experiment`` without resolving teacher
        references), and each reference must name a cell of the matrix or a run folder on disk.

        Raises:
            ConfigError: a bad cell config, or a reference to a run that is neither.
        """
        cells = [
            RunCell(
                task, condition, label, seed, frozenset(run_reference(r, task, seed) for r in run_references(e.method))
            )
            for task in spec.tasks
            for condition in spec.conditions
            for label, e in spec.methods.items()
            if e.conditions is None or condition.name in e.conditions
            for seed in spec.seeds
        ]
        keys = {cell.key for cell in cells}
        finished = set(done)
        for cell in cells:
            if cell.key in done:
                continue
            experiment(spec, cell.task, cell.condition, cell.label, cell.seed, out, resolve_refs=False)
            for need in sorted(cell.needs - keys):
                path = run_dir(out, *need) / "final"
                if not path.is_dir():
                    task, condition, label, seed = need
                    raise ConfigError(
                        f"teacher reference 'run:{condition}/{label}/seed{seed}' of {cell.name}: {path} does not "
                        "exist; fix: list the method it names in 'methods' (under that condition and seed) so "
                        "that it runs first"
                    )
                finished.add(need)  # a run outside the matrix, finished earlier
        return cls(cells, finished)

    @property
    def pending(self) -> list[RunCell]:
        """Cells neither done nor started, in protocol order."""
        return [c for c in self.cells if c.key not in self.finished and c.key not in self.started]

    def ready(self) -> list[RunCell]:
        """Pending cells whose needed runs have all finished, in protocol order."""
        return [c for c in self.pending if c.needs <= self.finished]

    def start(self, cell: RunCell) -> None:
        self.started.add(cell.key)

    def finish(self, cell: RunCell) -> None:
        self.finished.add(cell.key)

    def number(self, cell: RunCell) -> str:
        """``"[3/12]"``: the cell's place in the matrix."""
        return f"[{self.cells.index(cell) + 1}/{len(self.cells)}]"

    def stuck(self) -> ConfigError:
        """The error when cells are pending but none can ever start: their references form a cycle."""
        names = ", ".join(c.name for c in self.pending)
        return ConfigError(
            f"teacher references of {names} wait on each other; fix: make no run take its teacher from a run "
            "that (directly or not) takes its teacher from it"
        )


def _config(cell: RunCell, spec: ProtocolConfig, out: Path) -> tuple[ExperimentConfig, Path]:
    """The cell's experiment config, its teacher references resolved, and its run folder."""
    cfg = experiment(spec, cell.task, cell.condition, cell.label, cell.seed, out)
    return cfg, run_dir(out, *cell.key)


def _finish(matrix: Matrix, cell: RunCell, summary: dict[str, Any], results: Path) -> None:
    append_rows(results, rows_of(summary, cell.task, cell.condition, cell.label, cell.seed))
    matrix.finish(cell)


def run_cells(matrix: Matrix, spec: ProtocolConfig, out: Path, *, jobs: int, show_progress: bool) -> None:
    """Train every cell the matrix still holds; ``jobs`` at a time (see the module docstring)."""
    if jobs == 1:
        _run_here(matrix, spec, out, show_progress)
    elif matrix.pending:
        _run_in_processes(matrix, spec, out, jobs)


def _run_here(matrix: Matrix, spec: ProtocolConfig, out: Path, show_progress: bool) -> None:
    import vldistill.training.train as engine  # its train looked up at each call (tests replace it)

    while ready := matrix.ready():
        cell = ready[0]
        cfg, where = _config(cell, spec, out)
        console.print(f"{matrix.number(cell)} {cell.name}")
        matrix.start(cell)
        # resume: an unfinished cell continues from its checkpoint (a cell without one starts afresh)
        summary = engine.train(cfg, where, resume=True, show_progress=show_progress)
        _finish(matrix, cell, summary, out / "results.jsonl")
    if matrix.pending:
        raise matrix.stuck()


def train_in_worker(cfg: ExperimentConfig, where: Path) -> dict[str, Any]:
    """A worker process's task: one run, resumed if it has a checkpoint; its summary.

    Ctrl-C reaches the run: before its training loop as ``KeyboardInterrupt`` (nothing to save yet), in
    it through the loop's own handler (a checkpoint, then ``Interrupted``). An idle worker ignores it.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        from vldistill.training.train import train

        return train(cfg, where, resume=True, show_progress=False)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _threads_per_job(jobs: int) -> int:
    """Each run's share of the cores (at least one): 1 for two jobs on two cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _generate_worlds(spec: ProtocolConfig, out: Path, cells: list[RunCell]) -> None:
    """Write the generated world a run reads before the workers start (not once per worker, racing)."""
    from vldistill.training.experiment import resolve_root

    for task in dict.fromkeys(c.task for c in cells):
        first = next(c for c in cells if c.task == task)
        data = experiment(spec, task, first.condition, first.label, first.seed, out, resolve_refs=False).data
        for root in (data.root, data.shift_root):
            if root is not None:
                resolve_root(root, data.style, task, data.world_scale, data.world_seed)


def _run_in_processes(matrix: Matrix, spec: ProtocolConfig, out: Path, jobs: int) -> None:
    _generate_worlds(spec, out, matrix.pending)
    threads = _threads_per_job(jobs)
    results = out / "results.jsonl"
    running: dict[Future, RunCell] = {}
    failure: BaseException | None = None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=worker_init) as pool:
        try:
            while True:
                starting = matrix.ready()[: jobs - len(running)] if failure is None else []
                for cell in starting:
                    cfg, where = _config(cell, spec, out)
                    if cfg.train.threads is None:
                        cfg.train.threads = threads
                    matrix.start(cell)
                    running[pool.submit(train_in_worker, cfg, where)] = cell
                    console.print(f"{matrix.number(cell)} {cell.name}: started")
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    cell = running.pop(future)
                    try:
                        summary = future.result()
                    except Exception as err:  # the protocol stops; the runs in flight finish first
                        stop = "the protocol stops once the runs in flight finish" if running else "the protocol stops"
                        console.print(f"{matrix.number(cell)} {cell.name}: failed; {stop}")
                        failure = failure or err
                        continue
                    _finish(matrix, cell, summary, results)
                    console.print(f"{matrix.number(cell)} {cell.name}: done in {summary['seconds']:.0f} s")
        except BaseException:  # Ctrl-C: the running workers stop at their next step and save
            console.print("stopping: the runs in flight save a checkpoint; run the same command again to continue")
            for future in running:
                future.cancel()
            for future in list(running):
                if not future.cancelled() and future.exception() is None:
                    _finish(matrix, running[future], future.result(), results)
            raise
    if failure is not None:
        raise failure
    if matrix.pending:
        raise matrix.stuck()
