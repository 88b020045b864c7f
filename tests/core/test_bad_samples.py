"""mlcore.BadSampleLog: skipped samples counted exactly across DataLoader workers."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import Dataset

from mlcore import BadSampleLog, make_loader


class EveryThirdIsBad(Dataset):
    """Samples whose index is a multiple of 3 are 'unreadable': recorded, and the next one is returned."""

    def __init__(self, n: int, bad_log: BadSampleLog) -> None:
        self.n, self.bad_log = n, bad_log

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if i % 3 == 0:
            self.bad_log.record(f"/data/sample_{i:03d}.jpg", "truncated\tfile")
            i = i + 1
        return torch.tensor(i)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_count_is_exact_with_workers(num_workers):
    bad = BadSampleLog()
    ds = EveryThirdIsBad(30, bad)
    loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=num_workers)
    for _ in range(2):  # two epochs: every bad sample is met twice, counted once
        seen = torch.cat(list(loader))
        assert (seen % 3 != 0).all()
    expected = [f"/data/sample_{i:03d}.jpg" for i in range(0, 30, 3)]
    assert bad.paths() == expected
    assert len(bad) == 10
    assert set(bad.entries().values()) == {"truncated file"}  # a tab in the reason cannot split the line


def test_pickled_copy_writes_where_the_owner_reads(tmp_path):
    owner = BadSampleLog(tmp_path / "bad")
    copy = pickle.loads(pickle.dumps(owner))
    copy.record("a.png", "bad header")
    assert owner.paths() == ["a.png"]


def test_temporary_folder_removed_with_its_owner():
    bad = BadSampleLog()
    folder = bad.folder
    assert folder.is_dir()
    del bad
    assert not folder.exists()
