"""Loaders whose order and augmentation randomness resume exactly, with or without workers.

Exact mid-epoch resume needs two things a plain ``DataLoader`` does not give:

1. the sample order of every epoch must be a pure function of (seed, epoch), and a resumed run
   must be able to start at any batch of it: :class:`ResumableSampler` (DistributedSampler's
   permutation, sharded by rank, plus a start offset);
2. augmentation randomness must not depend on which worker process fetched a sample or on what
   that worker fetched before: :class:`SeededDataset` re-seeds the global python/numpy/torch RNGs
   from (seed, epoch, index) right before each ``dataset[index]``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlcore.distributed import env_world_size, get_rank, get_world_size, is_distributed
from mlcore.seed import sample_seed

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet RGB channel means (0..1 scale), the normalisation of ImageNet-pretrained backbones."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet RGB channel standard deviations (0..1 scale)."""

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""The three splits of every domain: train (fitting), val (selection, early stopping, tuning), test
(reported only)."""

Split = Literal["train", "val", "test", "all"]
"""A split name, or ``all`` (every sample found)."""


class DataError(ValueError):
    """Bad dataset on disk: unknown layout, missing meta/list file, unknown class, missing or unreadable
    image or mask, a mask not matching its image. The message names the file or folder; the CLIs print it
    as one line and exit 1 (:func:`mlcore.cli.run_cli`). Shared by every domain's data module."""


def check_split(split: str) -> None:
    """Raise :class:`DataError` unless ``split`` is ``train``, ``val``, ``test`` or ``all``."""
    if split != "all" and split not in SPLITS:
        raise DataError(f"split must be train, val, test or all, got {split!r}")


def write_split_json(path: str | Path, splits: dict[str, Sequence[Any]], *, root: str | Path | None = None,
                     **info: Any) -> Path:
    """Write a run's ``split.json`` (atomically) and return its path.

    Layout, the same for every domain::

        {"root": ROOT, **info, "counts": {"train": N, ...}, "splits": {"train": [item, ...], ...}}

    ``splits`` maps a split name to its items, in order. An item that is a :class:`~pathlib.Path` is written
    relative to ``root`` where it lies under it (else as given); a tuple/list item (e.g. ``(path, label)``)
    is written as a list with each element treated the same way; anything else as JSON writes it. ``info``
    says how the splits were drawn (seed, fractions, layout, classes ...).
    """
    from mlcore.runlog import write_json_atomic

    base = Path(root) if root is not None else None

    def encode(item: Any) -> Any:
        if isinstance(item, Path):
            if base is not None:
                try:
                    return str(item.relative_to(base))
                except ValueError:
                    pass
            return str(item)
        if isinstance(item, tuple | list):
            return [encode(v) for v in item]
        return item

    return write_json_atomic(Path(path), {
        "root": str(base) if base is not None else None, **info,
        "counts": {k: len(v) for k, v in splits.items()},
        "splits": {k: [encode(item) for item in v] for k, v in splits.items()},
    })


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` pairs: a seeded per-epoch permutation, sharded by rank.

    The permutation is ``torch.randperm(n, generator=seed + epoch)`` exactly as in
    :class:`torch.utils.data.DistributedSampler`, padded by repetition to a multiple of
    ``num_replicas`` and strided ``rank::num_replicas``, so the union over ranks of a DDP step's
    batches is the same set of samples a single process sees with the global batch.

    Args:
        length: number of samples in the dataset.
        shuffle: shuffle each epoch (else natural order).
        seed: the run seed.
        num_replicas, rank: DDP world size and rank (default: from the process group, else from
            ``torchrun``'s ``WORLD_SIZE``/``RANK`` environment variables).
        pad: repeat samples so every rank gets the same count (needed for training, where ranks
            step together); evaluation loaders use ``pad=False`` so no sample is counted twice.
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, pad: bool = True) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas if num_replicas is not None else _world_size()
        self.rank = rank if rank is not None else _rank()
        self.pad = pad
        self.epoch = 0
        self.start = 0
        if pad:
            self.per_replica = math.ceil(length / self.num_replicas)
        else:
            self.per_replica = len(range(self.rank, length, self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` and rewind to its first sample."""
        self.epoch = epoch
        self.start = 0

    def skip(self, num_samples: int) -> None:
        """Start the current epoch after its first ``num_samples`` samples (this rank's)."""
        self.start = num_samples

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if not self.pad:
            return order[self.rank::self.num_replicas]
        total = self.per_replica * self.num_replicas
        if total > len(order):
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._indices()[self.start:]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return self.per_replica - self.start

    def state_dict(self) -> dict[str, int]:
        """Epoch, start offset (samples) and seed."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.epoch, self.start, self.seed = state["epoch"], state["start"], state["seed"]


def _world_size() -> int:
    # the loader may be built before the trainer initialises the process group
    return get_world_size() if is_distributed() else env_world_size()


def _rank() -> int:
    return get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


class SeededDataset(Dataset):
    """Wraps a map-style dataset so ``ds[(index, seed)]`` runs ``dataset[index]`` under ``seed``.

    The global python, numpy and torch (CPU) RNGs are re-seeded before each fetch, so a sample's
    augmentation is a pure function of (run seed, epoch, index) whichever worker fetches it. In
    the main process (``num_workers=0``) the python and torch states are restored afterwards so
    model-side randomness (dropout) is not disturbed. numpy's state is not restored: saving and
    restoring it costs ~100 us per sample (measured; 16% of a small CNN's step in
    ``bench/trainer_overhead.py``), and after a fetch it is a deterministic function of the last
    sample anyway, so resume stays exact.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        in_main = torch.utils.data.get_worker_info() is None
        if in_main:
            saved = (random.getstate(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # CPU generator only: torch.manual_seed also seeds every accelerator (~0.3 ms a call)
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if in_main:
                random.setstate(saved[0])
                torch.set_rng_state(saved[1])


S = TypeVar("S")


def stratified_split(samples: Sequence[S], val_fraction: float, seed: int = 0) -> tuple[list[S], list[S]]:
    """Split ``samples`` (anything with an int ``.label``) into ``(train, val)`` per class.

    ``round(val_fraction * n)`` of a class's ``n`` samples go to val, clamped to ``[1, n - 1]`` when
    ``n >= 2`` and ``val_fraction > 0`` (a 1-sample class stays in train). Which samples go is a per-class
    permutation from ``numpy.random.default_rng(seed)`` (classes in label order), so the split is a pure
    function of (samples, fraction, seed) and leaves the augmentation RNGs alone; both outputs keep the
    input order.

    Raises:
        ValueError: unless ``0 <= val_fraction < 1``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)  # type: ignore[attr-defined]
    val_ids: set[int] = set()
    for label in sorted(by_class):
        ids = by_class[label]
        n_val = 0
        if val_fraction > 0 and len(ids) >= 2:
            n_val = min(max(round(val_fraction * len(ids)), 1), len(ids) - 1)
        val_ids.update(ids[j] for j in rng.permutation(len(ids))[:n_val])
    return ([s for i, s in enumerate(samples) if i not in val_ids],
            [s for i, s in enumerate(samples) if i in val_ids])


class BadSampleLog:
    """The samples a dataset skipped because they could not be read, counted across loader workers.

    Each ``DataLoader`` worker holds its own copy of the dataset, so a list kept on the dataset only
    sees what the main process read. Here every process appends ``path<TAB>reason`` lines to its own
    file (named by its pid) in one folder; the object pickles as that folder's path, so worker copies
    (fork or spawn) write where the owner reads. :meth:`paths` is then exact for any ``num_workers``.

    Args:
        folder: where to keep the per-process files (default: a temporary folder, removed when the
            owning object is garbage-collected or the program exits).
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        if folder is None:
            folder = tempfile.mkdtemp(prefix="mlcore-bad-samples-")
            # only the creating process removes it (forked workers inherit the finalizer)
            weakref.finalize(self, _remove_owned_folder, folder, os.getpid())
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seen: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": str(self.folder)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder, self._seen = Path(state["folder"]), set()

    def record(self, path: str | Path, reason: str = "") -> None:
        """Note that ``path`` was skipped (once per process; later repeats are ignored) and log a warning."""
        key = str(path)
        if key in self._seen:
            return
        self._seen.add(key)
        log.warning("skipped unreadable sample %s: %s", key, reason)
        line = key + "\t" + " ".join(reason.split()) + "\n"
        with open(self.folder / f"{os.getpid()}.tsv", "a", encoding="utf-8") as f:
            f.write(line)

    def entries(self) -> dict[str, str]:
        """``{path: reason}`` of every skipped sample, from all processes, first record of each path."""
        out: dict[str, str] = {}
        for file in sorted(self.folder.glob("*.tsv")):
            for line in file.read_text(encoding="utf-8").splitlines():
                path, _, reason = line.partition("\t")
                out.setdefault(path, reason)
        return out

    def paths(self) -> list[str]:
        """The skipped samples' paths, each once (sorted)."""
        return sorted(self.entries())

    def __len__(self) -> int:
        return len(self.entries())


def _remove_owned_folder(folder: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore SIGINT and SIGUSR1: a Ctrl-C reaches the whole process group, and the
    main process, which finishes its update and saves ``last.pt`` first, shuts them down. SIGTERM
    keeps its default: the DataLoader's last-resort shutdown of a stuck worker is a SIGTERM."""
    import signal

    for name in ("SIGINT", "SIGUSR1"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    distributed: bool | None = None,
    pad: bool | None = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` that the :class:`~mlcore.trainer.Trainer` can resume exactly.

    Under ``torchrun`` (``distributed=None`` detects it, also before the process group exists)
    each rank gets its shard; ``batch_size`` is then the per-rank micro-batch. ``pad`` (default:
    ``shuffle``, i.e. training loaders) repeats samples so all ranks get equally many. Workers
    ignore SIGINT and SIGUSR1 (the trainer's stop signals are the main process's business).
    """
    world = _world_size() if distributed in (None, True) else 1
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed,  # type: ignore[arg-type]
                               num_replicas=world, rank=_rank() if world > 1 else 0,
                               pad=shuffle if pad is None else pad)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["worker_init_fn"] = _ignore_stop_signals
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        # A private generator: creating an iterator draws the workers' base seed from it, not from
        # the global torch RNG, so starting an epoch (or resuming mid-epoch) leaves model RNG alone.
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def find_resumable_sampler(loader: DataLoader) -> ResumableSampler | None:
    """The loader's :class:`ResumableSampler`, if it was built by :func:`make_loader`."""
    sampler = getattr(loader, "sampler", None)
    return sampler if isinstance(sampler, ResumableSampler) else None
