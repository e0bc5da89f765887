"""Many students in one pass: consecutive stages that read the same data train together.

A cohort's stages see the same batches (same loader: order and augmentation draws come from the run's data
seed), so each batch is gathered and augmented once and handed to every student as one
:class:`~flowkd.teachers.Batch`; each teacher computes its taps once per batch for every student that reads it
(the union of their taps, :func:`shared_teachers`), and students whose layer pairs read the same teacher taps
also share the teacher's side of PKT (through the batch's memo). Each student keeps its own step,
loss, schedule, optimiser, learning-rate plan, records and checkpoints (``flowkd.trainer.Trainer``); on a CPU
the weights and metrics are bit-identical to training the same stages one after another.

A student whose training fails (a non-finite loss) stops with its own error; the others go on.

On a CPU the students also step *at the same time* (``workers`` > 1, ``fast.student_workers``): each on a
worker thread running its operations on ``threads`` threads, each going on to the next batch as soon as it is
done with the last, while the next batch (gathered, augmented, the shared teachers' taps computed) is made as
one more task of the same workers (:class:`_SideBySide`). Tiny students leave most of a CPU's
cores idle inside one operation; side by side they use them. The weights are then bit-identical to training the
same stages one after another with ``torch.set_num_threads(threads)`` (a float sum split over other thread
counts rounds differently). A student whose step draws random numbers (dropout, say) would draw them in a
different order from run to run side by side: the first batch checks for that, and such a cohort steps its
students one at a time (on the same threads, so the run stays reproducible).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterator, Sequence

import torch

from .errors import FlowKDError
from .loop import run_epochs
from .trainer import Trainer
from .stages import Stage
from .teachers import SharedTeacher, as_batch, as_teacher

__all__ = ["cohorts", "train_cohort", "shared_teachers", "worker_plan"]


def cohorts(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Consecutive stages grouped into cohorts: a stage joins the current one when it reads the same batches
    (``Stage.data_key``), trains a model no member trains, and neither learns from a model a member trains nor
    teaches one (a teacher must be frozen while the cohort trains)."""
    groups: list[list[Stage]] = []
    for st in stages:
        g = groups[-1] if groups else None
        if g is not None and st.data_key == g[0].data_key and _independent(st, g):
            g.append(st)
        else:
            groups.append([st])
    return groups


def _independent(st: Stage, group: list[Stage]) -> bool:
    trained = {m.model_name for m in group}
    teachers = {t for m in group for t in m.learns_from}
    return st.model_name not in trained and not set(st.learns_from) & trained and st.model_name not in teachers


@contextlib.contextmanager
def shared_teachers(group: list[Stage], inference_mode: bool = True, autocast: torch.dtype | None = None):
    """While the block runs, every step of ``group`` whose stage reads the same teacher source (a network,
    features, an extractor) as another member reads one :class:`~flowkd.teachers.SharedTeacher`: that
    source's taps (the union of the members') computed once per batch, under ``autocast`` (the steps'
    precision). Yields the shared teachers; then the steps read their own teachers again and the shared ones
    are closed."""
    by_source: dict[int, list[Stage]] = {}
    for st in group:
        if st.teacher is not None and st.teacher_source is not None:
            by_source.setdefault(id(st.teacher_source), []).append(st)
    shared, members = [], [m for m in by_source.values() if len(m) > 1]
    try:
        for m in members:
            taps = list(dict.fromkeys(t for st in m for t in st.teacher.taps))
            teacher = SharedTeacher(as_teacher(m[0].teacher_source, taps, inference_mode), autocast)
            shared.append(teacher)
            for st in m:
                st.step.teacher = teacher
        yield shared
    finally:
        for st in (st for m in members for st in m):
            st.step.teacher = st.teacher
        for teacher in shared:
            teacher.close()


def _per_worker(workers: int) -> int:
    """The threads each of ``workers`` side-by-side students runs its operations on (the process's threads
    shared out; all of them for one worker)."""
    threads = torch.get_num_threads()
    return threads if workers == 1 else max(1, threads // workers)


def worker_plan(setting: int | str, students: int, device: torch.device, where: str = "fast.student_workers"
                ) -> tuple[int, int]:
    """How many students of a cohort step at once, and the threads each one's operations run on:
    ``setting`` "auto" (on a CPU, as many as the threads allow: ``min(students, torch threads)``) or a whole
    number >= 1 (1: one at a time, at the process's threads). Students side by side are a CPU mechanism."""
    threads = torch.get_num_threads()
    if setting == "auto":
        workers = min(students, threads) if device.type == "cpu" else 1
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        if setting > 1 and device.type != "cpu":
            raise FlowKDError(f"{where} = {setting}: students step side by side on a CPU only; this run's device "
                              f"is {device} (set it to 1 or \"auto\")")
        workers = min(setting, students)
    else:
        raise FlowKDError(f"{where} must be \"auto\" or a whole number >= 1, got {setting!r}")
    workers = max(1, workers)
    return workers, _per_worker(workers)


class _SideBySide:
    """A cohort's epochs on a pool of workers. Each student steps through the batches in order, as soon as its
    step on the batch before is done and the batch is made: no student waits for the others at a batch's end.
    The batches are made (gathered, augmented, the shared ``teachers``' taps computed) as tasks of the same
    pool, at most ``WINDOW`` alive at once. The cohort's first batch is stepped one student at a time to see
    whether a step draws from the global random generator; if one does, every later step runs one at a time,
    batch after batch and student after student (the order of a cohort on one thread, so the draws are
    reproducible)."""

    WINDOW = 2

    def __init__(self, pool: ThreadPoolExecutor, teachers: Sequence[SharedTeacher], log: Callable[[str], None]):
        self.pool, self.teachers, self.log = pool, teachers, log
        self.checking, self.one_at_a_time, self.drawn = True, False, []

    def epoch(self, loader, active: Sequence[Trainer], cost: dict[str, float]) -> Iterator[None]:
        """Train ``active`` over one pass of ``loader``; yields each time every student is done with a batch."""
        it, teachers, pool = iter(loader), self.teachers, self.pool

        def make():
            b = next(it, None)
            if b is not None:
                b = as_batch(b)
                for s in teachers:  # the shared teachers' taps, into the batch's memo
                    s(b)
            return b

        n = len(active)
        order = sorted(range(n), key=lambda k: -cost.get(active[k].name, 0.0))  # the costliest steps first
        made: dict[int, tuple] = {}   # batch number -> batch, until every student is done with it
        left: dict[int, int] = {}     # batch number -> students still to step on it
        at = [0] * n                  # each student's next batch
        busy = {pool.submit(make): -1}  # future -> the student stepping (-1: a batch being made)
        n_made, ended, rng = 0, False, None
        try:
            while busy:
                done, _ = wait(busy, return_when=FIRST_COMPLETED)
                for f in done:
                    who, out = busy.pop(f), f.result()  # a step's error is raised here
                    if who < 0:
                        if out is None:
                            ended = True
                        else:
                            made[n_made], left[n_made], n_made = out, n, n_made + 1
                        continue
                    if rng is not None:  # checking: the only step that ran
                        if not torch.equal(rng, torch.get_rng_state()):
                            self.drawn.append(active[who].name)
                        rng = None
                    i = at[who]
                    at[who], left[i] = i + 1, left[i] - 1
                    if not left[i]:
                        del made[i], left[i]
                        if self.checking:
                            self._checked()
                        yield
                if not ended and -1 not in busy.values() and len(made) < self.WINDOW:
                    busy[pool.submit(make)] = -1  # before the steps: the first free worker makes it
                stepping = {w for w in busy.values() if w >= 0}
                if self.checking or self.one_at_a_time:
                    if not stepping:
                        i, k = min((at[k], k) for k in range(n))
                        if i in made:
                            rng = torch.get_rng_state() if self.checking else None
                            busy[pool.submit(active[k].batch, made[i])] = k
                else:
                    for k in order:
                        if k not in stepping and at[k] in made:
                            busy[pool.submit(active[k].batch, made[at[k]])] = k
        finally:
            wait(busy)

    def _checked(self) -> None:
        self.checking = False
        if self.drawn:
            self.one_at_a_time = True
            self.log(f"cohort: {', '.join(self.drawn)} draw(s) random numbers in the training step; the students "
                     "step one at a time (side by side the draws' order would vary from run to run)")


def train_cohort(loader, trainers: Sequence[Trainer], *, show_progress: bool = True,
                 on_failure: Callable[[Trainer, FlowKDError], None] | None = None,
                 workers: int = 1, threads: int | None = None, teachers: Sequence[SharedTeacher] = (),
                 log: Callable[[str], None] = print) -> dict[str, FlowKDError]:
    """Train every trainer over the same batches of ``loader`` (``flowkd.loop.run_epochs``, the one epoch
    loop); returns the errors of the trainers that failed, by name; the others run to their end.

    ``workers`` > 1: the students step side by side on that many worker threads, each running its operations
    on ``threads`` threads; the batches (and ``teachers``' taps for them) are made as tasks of the same workers
    (see the module's notes)."""
    if workers > 1 and len(trainers) > 1:
        threads = threads or _per_worker(workers)
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(threads,),
                                thread_name_prefix="flowkd-student") as pool:
            side = _SideBySide(pool, teachers, log)
            return run_epochs(loader, trainers, show_progress=show_progress, on_failure=on_failure,
                              run_epoch=side.epoch)
    return run_epochs(loader, trainers, show_progress=show_progress, on_failure=on_failure)
