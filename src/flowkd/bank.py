"""A bank of a frozen teacher's views: its outputs on K augmented views of every training image, computed once.

A frozen teacher's outputs depend only on the pixels it sees. A view is a crop offset and a flip (pad-4 crop +
flip: 162 views, a byte each; ``flowkd.data.arrays``), so a training image seen through a view is fully named by
(image, view id). The bank computes, once, the teacher's taps on K views of every training image — view k is
exactly the augmentation a shuffling loader draws for epoch k — and a stage trained from it serves image i in
epoch e as its view ``e mod K``: the student gets the pixels the teacher saw, and its loss reads the teacher's
side from the bank instead of running the teacher. With K = the number of epochs this *is* live training.

What is stored per (view, image) is the smallest input each loss needs (its ``teacher_form``: logits for KD,
the pooled map or vector for PKT and the information flow, the attention map for attention transfer), as an
*entry* ``(tap, form, dtype)``: float16 unless the loss asks for more (KD's logits stay float32).

Files: ``<root>/<fingerprint>/`` holds ``manifest.json`` (what the bank depends on: teacher weights, data,
augmentation, view seed, precision) and ``view-<k>/<entry>.npy`` per view and entry, memory-mapped when read; the
view ids are not stored (they are drawn again from the view seed, which the fingerprint covers). A view's file is written
under a temporary name with a progress file beside it, then renamed: a killed computation resumes at the
last chunk it finished; a reader only ever sees whole files. The fingerprint covers everything the values
depend on except K, so a bank of 4 views is the first 4 views of one of 8: every stage, student, seed and run
that matches reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .data.arrays import ArrayDataset, Loader, apply_views
from .errors import FlowKDError
from .io import atomic_write_json, atomic_write_text
from .taps import FrozenTaps

__all__ = ["Entry", "ViewBank", "BankTeacher", "entry_for", "default_root", "bank_components", "bank_precision", "bank_costs"]

_STORE = {"float16": (torch.float16, np.float16), "float32": (torch.float32, np.float32)}


@dataclass(frozen=True)
class Entry:
    """One stored array per view: ``tap``'s output, reduced by ``form`` (a loss's ``teacher_form``, "" for none),
    stored as ``dtype``."""

    tap: str
    form: str = ""
    dtype: str = "float16"

    @property
    def file(self) -> str:
        safe = self.tap.replace("/", "_").replace(":", "-").replace("@", "_at_")
        return f"{safe}{'.' + self.form if self.form else ''}.{self.dtype}.npy"


def entry_for(tap: str, loss: nn.Module) -> tuple[Entry, Callable | None]:
    """The entry a pair loss reads from a bank, and the reduction that makes it. A pair loss may declare
    ``teacher_form(t)`` (the smallest tensor from which it computes the same value; default: ``t``),
    ``teacher_form_name`` (naming that reduction in the bank's files) and ``bank_dtype`` ("float16" default)."""
    form = getattr(loss, "teacher_form", None)
    name = getattr(loss, "teacher_form_name", "") if form is not None else ""
    dtype = getattr(loss, "bank_dtype", "float16")
    if dtype not in _STORE:
        raise FlowKDError(f"{type(loss).__name__}.bank_dtype must be one of {', '.join(_STORE)}, got {dtype!r}")
    return Entry(tap, name, dtype), form


def bank_precision(setting: str, device: torch.device) -> str:
    """The teacher pass's precision: ``setting`` fp32 / bf16, or "auto": bf16 where the device computes it natively
    (``flowkd.inference.bf16_supported``), else fp32."""
    if setting != "auto":
        return setting
    from .inference import bf16_supported

    return "bf16" if bf16_supported(device) else "fp32"


def default_root() -> Path:
    """Where banks live unless a model says ``bank = "<folder>"``: ``$FLOWKD_CACHE/banks``, else
    ``~/.cache/flowkd/banks``."""
    base = os.environ.get("FLOWKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flowkd")
    return Path(base) / "banks"


def _sha(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def bank_components(teacher: nn.Module, data: ArrayDataset, loader: Loader, precision: str) -> dict:
    """Everything a bank's values depend on, as short strings: the teacher (its class and every parameter and
    buffer), the data (images, labels, normalisation), the augmentation (padding), the view seed (the loader's
    seed, batch size, shuffling and last-batch rule: they fix each epoch's draws) and the teacher pass's
    precision."""
    state = teacher.state_dict()
    return {
        "teacher": f"{type(teacher).__name__}:{_sha(*(state[k] for k in sorted(state)))}",
        "data": f"{len(data)} images {tuple(data.shape)}:{_sha(data.images, data.labels)}",
        "normalisation": f"mean {tuple(round(m, 6) for m in data.mean)} std {tuple(round(s, 6) for s in data.std)}",
        "augmentation": f"crop pad {loader.pad} + flip",
        "views": f"seed {loader.seed}, batch {loader.batch_size}, shuffle {loader.shuffle}, drop_last {loader.drop_last}",
        "precision": precision,
    }


def bank_costs(folder) -> list[dict]:
    """What computing the bank in ``folder`` cost, view by view (its ``log.jsonl``: one line per view computed,
    resumed parts included); empty for a bank computed before flowkd recorded it."""
    path = Path(folder) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _fingerprint(components: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(components), sort_keys=True).encode()).hexdigest()[:20]


def _bar(total: int, desc: str, enabled: bool):
    """A progress bar in images (tqdm, when installed and the output is a terminal), else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, dynamic_ncols=True)


class ViewBank:
    """The views of one frozen ``teacher`` on ``data`` as ``loader`` (shuffling, augmenting) would draw them.

    ``root`` is a folder of banks (each in a sub-folder named by its fingerprint) or one bank's own folder (it
    holds a ``manifest.json``): such a bank must match this teacher, data and loader, or building refuses with
    one line naming the difference. ``precision``: "bf16" (autocast on a CPU or GPU that supports it) or
    "fp32" for the teacher's pass; ``batch_size`` the pass's batch (the fastest measured on the machine)."""

    def __init__(self, teacher: nn.Module, data: ArrayDataset, loader: Loader, root=None, *,
                 precision: str = "fp32", batch_size: int = 256, name: str = "teacher", log: Callable = print,
                 progress: bool = True):
        if precision not in ("fp32", "bf16"):
            raise FlowKDError(f"bank precision must be fp32 or bf16, got {precision!r}")
        if not loader.augment:
            raise FlowKDError(f"a bank of views of {name!r} needs an augmenting loader (data.augment = true): "
                              "without augmentation every epoch is one view, use precompute = true")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FlowKDError(f"bank batch size must be a whole number >= 1, got {batch_size!r}")
        self.teacher, self.data, self.loader, self.name, self.log = teacher, data, loader, name, log
        self.precision, self.batch_size, self.progress = precision, batch_size, progress
        self.components = bank_components(teacher, data, loader, precision)
        root = Path(root) if root else default_root()
        if (root / "manifest.json").is_file():  # one bank's own folder: it must be this one
            self.dir = root
            self._check_manifest(json.loads((root / "manifest.json").read_text()))
        else:
            self.dir = root / _fingerprint(self.components)
            if (self.dir / "manifest.json").is_file():
                self._check_manifest(json.loads((self.dir / "manifest.json").read_text()))
        self._views: list[torch.Tensor] = []  # view k: each image's view id
        self._tables: dict[int, torch.Tensor] = {}
        self._settings: dict = {}  # the fastest pass setting measured, by the taps read
        self._open: dict[tuple[int, Entry], np.ndarray] = {}

    def _check_manifest(self, manifest: dict) -> None:
        made = manifest.get("components", {})
        for key, mine in self.components.items():
            if made.get(key) != mine:
                raise FlowKDError(f"bank {self.dir} was made for another {key} ({made.get(key)!r}; this stage's: "
                                  f"{mine!r}): point models.{self.name}.bank at a bank folder's parent to use a "
                                  "matching one, or at a new folder")

    # ---- views -----------------------------------------------------------------------------------------
    def views(self, k: int) -> torch.Tensor:
        """View k of every image: the view a loader with this bank's seed draws for it in epoch k."""
        while len(self._views) <= k:
            self._views.append(self.loader.epoch_views(len(self._views)))
        return self._views[k]

    def view_table(self, count: int) -> torch.Tensor:
        """(count, N) view ids: what ``Loader(views=...)`` serves (epoch e: row e mod count)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise FlowKDError(f"models.{self.name}.views must be a whole number >= 1, got {count!r}")
        if count not in self._tables:  # one tensor per count: loaders serving the same views compare equal
            self._tables[count] = torch.stack([self.views(k) for k in range(count)])
        return self._tables[count]

    # ---- files -----------------------------------------------------------------------------------------
    def path(self, k: int, entry: Entry) -> Path:
        return self.dir / f"view-{k:04d}" / entry.file

    def has(self, k: int, entry: Entry) -> bool:
        return self.path(k, entry).is_file()

    def ensure(self, wanted: Mapping[Entry, Callable | None], count: int | Mapping[Entry, int]) -> None:
        """Compute what is missing of ``wanted`` (entry -> its reduction) for views 0 .. count-1 (``count``: one
        number, or each entry's own): one teacher pass per view that lacks an entry, every missing entry of
        that view from the same pass."""
        counts = count if isinstance(count, Mapping) else {e: count for e in wanted}
        most = max(counts.values(), default=0)
        self.view_table(max(most, 1))
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock():  # one process computes a bank at a time; the others then find its files
            manifest = self.dir / "manifest.json"
            if not manifest.is_file():
                atomic_write_json(manifest, {"components": self.components, "fingerprint": self.dir.name,
                                             "note": "a flowkd bank of teacher views; delete the folder to free its space"})
            for k in range(most):
                missing = {e: f for e, f in wanted.items() if counts[e] > k and not self.has(k, e)}
                if missing:
                    self._compute(k, missing, most)

    @contextlib.contextmanager
    def _lock(self):
        """An exclusive lock on the bank's folder (released by the system when the holder dies)."""
        import fcntl

        with open(self.dir / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log(f"[{self.name}] another process is computing the bank in {self.dir}: waiting for it")
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def size(self) -> int:
        """Bytes on disk of every whole file of this bank."""
        return sum(p.stat().st_size for p in self.dir.glob("view-*/*.npy")) if self.dir.is_dir() else 0

    def _compute(self, k: int, entries: Mapping[Entry, Callable | None], count: int) -> None:
        taps = list(dict.fromkeys(e.tap for e in entries))
        n, data, dev = len(self.data), self.data, self.data.images.device
        views = self.views(k).to(dev)
        partial = {e: self.path(k, e).with_name("." + e.file + ".partial") for e in entries}
        which = hashlib.sha256(" ".join(sorted(e.file for e in entries)).encode()).hexdigest()[:12]
        done_file = self.path(k, next(iter(entries))).parent / f".progress-{which}"  # rows done, for these entries
        start = 0
        if done_file.is_file() and all(p.is_file() for p in partial.values()):
            start = int(done_file.read_text().split()[0])  # a killed computation: go on after its last chunk
        arrays: dict[Entry, np.ndarray] = {}
        frozen = FrozenTaps(self.teacher, taps, inference_mode=True)
        was_training = self.teacher.training
        self.teacher.eval()
        setting, bar = None, None

        def run():  # the pass's precision (and, measured, its threads)
            if setting is not None:
                return setting.context()
            return (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        try:
            t0 = time.perf_counter()  # the view's time counts the search for the fastest setting, when there is one
            setting = self._setting(frozen, taps, views)
            batch = setting.batch if setting is not None else self.batch_size
            bar = _bar(n - start, f"[{self.name}] bank view {k + 1}/{count}", self.progress)
            for lo in range(start, n, batch):
                hi = min(n, lo + batch)
                x = data.normalize(apply_views(data.images[lo:hi], views[lo:hi], self.loader.pad))
                x = setting.prepare(x) if setting is not None else x.contiguous(memory_format=torch.channels_last)
                with run():
                    out = frozen(x)
                for e, form in entries.items():
                    v = out[e.tap]
                    v = form(v) if form is not None else v
                    v = v.detach().to(_STORE[e.dtype][0]).cpu().contiguous().numpy()
                    if e not in arrays:
                        partial[e].parent.mkdir(parents=True, exist_ok=True)
                        mode = "r+" if start and partial[e].is_file() else "w+"
                        arrays[e] = np.lib.format.open_memmap(partial[e], mode=mode, dtype=v.dtype,
                                                              shape=(n, *v.shape[1:]))
                    arrays[e][lo:hi] = v
                if hi == n or ((hi - start) // batch) % 8 == 0:  # every 8 batches: what is written is kept
                    for a in arrays.values():
                        a.flush()
                    atomic_write_text(done_file, f"{hi}\n")
                if bar is not None:
                    bar.update(hi - lo)
        finally:
            frozen.remove()
            self.teacher.train(was_training)
            if bar is not None:
                bar.close()
        for e, a in arrays.items():
            a.flush()
            del a
            os.replace(partial[e], self.path(k, e))  # whole or absent
        arrays.clear()
        done_file.unlink(missing_ok=True)
        dt = time.perf_counter() - t0
        mib = sum(self.path(k, e).stat().st_size for e in entries) / 2**20
        how = setting.summary().split(":")[0] if setting is not None else f"batch {batch}, {self.precision}"
        self.log(f"[{self.name}] bank view {k + 1}/{count}: {n - start} images in {dt:.1f}s "
                 f"({(n - start) / max(dt, 1e-9):.0f} images/s; {how}), {mib:.1f} MiB in {self.dir}")
        record = {"view": k, "entries": sorted(e.file for e in entries), "images": n - start, "resumed_at": start,
                  "seconds": round(dt, 2), "setting": how, "threads": torch.get_num_threads(),
                  "load_avg": [round(v, 2) for v in os.getloadavg()], "bytes": int(mib * 2**20),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(self.dir / "log.jsonl", "a") as f:  # what each view cost, for the results that read this bank
            f.write(json.dumps(record) + "\n")

    def costs(self) -> list[dict]:
        """What computing this bank cost, view by view (:func:`bank_costs`)."""
        return bank_costs(self.dir)

    def _setting(self, frozen: FrozenTaps, taps: list, views: torch.Tensor):
        """The fastest way to run the teacher's pass on this machine (batch, memory format, threads), measured on
        the first images, at the bank's precision (part of its fingerprint); None for a small dataset (not worth
        measuring: the bank's batch size, channels_last)."""
        if len(self.data) < 4096:
            return None
        key = tuple(taps)
        if key in self._settings:  # measured once per bank and set of taps, not once per view
            self._settings[key].apply(self.teacher)
            return self._settings[key]
        from .inference import fastest_setting

        sample = self.data.normalize(apply_views(self.data.images[:256], views[:256], self.loader.pad))
        setting = fastest_setting(self.teacher, sample, sample.device, forward=lambda m, x: frozen(x),
                                  bf16=self.precision == "bf16", tolerance=float("inf"))
        setting.apply(self.teacher)
        self._settings[key] = setting
        return setting

    def array(self, k: int, entry: Entry) -> np.ndarray:
        key = (k, entry)
        a = self._open.get(key)
        if a is None:
            path = self.path(k, entry)
            if not path.is_file():
                raise FlowKDError(f"bank {self.dir} lacks view {k} of {entry.tap!r}: build it first (ViewBank.ensure)")
            a = self._open[key] = np.load(path, mmap_mode="r")
        return a

    def teacher_for(self, entries: Mapping[str, Entry], count: int) -> "BankTeacher":
        return BankTeacher(self, entries, count)


class BankTeacher:
    """A teacher answered from a bank: ``teacher(batch) -> {tap: features}`` for the batch's images (by their
    positions, ``batch.index``) as seen through the batch's views (``batch.view``). Each (image, view) is found
    among the bank's ``count`` views of that image; a view the bank does not hold is an error (the loader must
    serve the bank's views: ``Loader(views=bank.view_table(count))``)."""

    def __init__(self, bank: ViewBank, entries: Mapping[str, Entry], count: int):
        self.bank, self.entries, self.count = bank, dict(entries), count
        self.taps = tuple(entries)
        self.table = bank.view_table(count)  # (count, N)

    def rows(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """For each sample of a batch, the bank's view that holds its (image, view)."""
        index = index.cpu().long()
        hit = self.table[:, index] == view.cpu().to(self.table.dtype)[None, :]   # (count, B)
        if not bool(hit.any(0).all()):
            bad = int(torch.nonzero(~hit.any(0))[0])
            raise FlowKDError(f"bank of {self.bank.name!r}: image {int(index[bad])} was served through view "
                              f"{int(view[bad])}, which none of the bank's {self.count} views of it is: train from "
                              "the bank with the loader it gives (Loader(views=...))")
        return hit.int().argmax(0)  # the first matching view

    def lookup(self, index: torch.Tensor, view: torch.Tensor, device=None) -> dict[str, torch.Tensor]:
        slots = self.rows(index, view)
        idx = index.cpu().long().numpy()
        out: dict[str, torch.Tensor] = {}
        for tap, entry in self.entries.items():
            first = self.bank.array(0, entry)
            buf = np.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
            for k in torch.unique(slots).tolist():
                sel = (slots == k).numpy()
                buf[sel] = self.bank.array(k, entry)[idx[sel]]
            t = torch.from_numpy(buf).float()
            out[tap] = t.to(device) if device is not None else t
        return out

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        if batch.index is None or batch.view is None:
            raise FlowKDError(f"a bank of {self.bank.name!r}'s views needs each batch's sample positions and views "
                              "(a Loader built with the bank's views gives them)")
        return self.lookup(batch.index, batch.view, batch.x.device)

    def close(self) -> None:
        pass
