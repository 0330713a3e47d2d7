"""Batches from decoded rows: the quasi-random order, the background prefetch, the loaders' results."""
import threading

import numpy as np
import pytest
import torch

from imgcls.data.dataset import DecodedImages
from imgcls.data.loader import BatchLoader, BatchOrder, prefetch, quasi_random


def test_quasi_random_is_a_seeded_permutation_that_reads_one_window_of_blocks_at_a_time():
    rng = np.random.default_rng(0)
    file_rows = rng.permutation(1000) + 5000  # a subset's places in a larger file, in any order
    order = quasi_random(file_rows, block_rows=10, window_blocks=4, generator=torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(1000))
    again = quasi_random(file_rows, 10, 4, torch.Generator().manual_seed(1))
    other = quasi_random(file_rows, 10, 4, torch.Generator().manual_seed(2))
    assert torch.equal(order, again) and not torch.equal(order, other)
    block_of = np.empty(1000, dtype=np.int64)
    block_of[np.argsort(file_rows, kind="stable")] = np.arange(1000) // 10
    for start in range(0, 1000, 40):  # each window of 40 positions comes from exactly 4 blocks
        assert len(set(block_of[order[start:start + 40].numpy()])) == 4
    assert not torch.equal(order, torch.from_numpy(np.argsort(file_rows)))  # shuffled within the windows


def test_the_auto_order_is_quasi_random_only_for_a_mapped_file_larger_than_memory():
    images = torch.zeros(64, 1, 4, 4, dtype=torch.uint8)
    data = DecodedImages(images, torch.zeros(64, dtype=torch.long), [str(i) for i in range(64)])
    cpu = torch.device("cpu")
    assert BatchLoader(data, 8, [0.5], [0.5], shuffle=True, device=cpu).order.file_rows is None
    mapped = DecodedImages(images, data.labels, data.paths, mapped=True)
    assert BatchLoader(mapped, 8, [0.5], [0.5], shuffle=True, device=cpu).order.file_rows is None  # it fits
    forced = BatchLoader(data, 8, [0.5], [0.5], shuffle=True, device=cpu, order="quasi")
    assert forced.order.file_rows is not None and len(list(forced)) == 8


def test_prefetched_batches_equal_the_same_seed_gathered_in_order():
    images = torch.randint(0, 255, (50, 3, 6, 6), dtype=torch.uint8)
    labels = torch.arange(50) % 3
    data = DecodedImages(images, labels, [str(i) for i in range(50)])
    loader = BatchLoader(data, 16, [0.5] * 3, [0.25] * 3, shuffle=True, device=torch.device("cpu"),
                         generator=torch.Generator().manual_seed(3), drop_last=True)
    batches = list(loader)
    order = BatchOrder(50, 16, shuffle=True, device=torch.device("cpu"), generator=torch.Generator().manual_seed(3),
                       drop_last=True)
    assert len(batches) == len(order) == 4  # the remainder of 2 is no tiny one
    for (x, y), idx in zip(batches, order):
        assert torch.equal(y, labels[idx])
        assert torch.allclose(x, (images[idx].float() - 127.5) / 63.75)


def test_prefetch_raises_the_producers_error_and_stops_its_thread_when_left_early():
    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken()))
    before = threading.active_count()
    items = prefetch(iter(range(10_000)), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # what a `break` out of a training loop does
    assert threading.active_count() == before


def test_the_order_flag_trains_through_the_cli_and_is_saved(tmp_path, capsys):
    from imgcls.cli import main

    from .conftest import write_class_folders

    data = write_class_folders(tmp_path / "data", per_class=4)
    flags = ["train", str(data), "--model", "simple-cnn", "--img-size", "16", "--epochs", "1"]
    assert main([*flags, "--order", "quasi", "--out", str(tmp_path / "run")]) == 0
    assert "order: quasi" in (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(SystemExit) as exit_:  # argparse's own one-line error
        main([*flags, "--order", "sideways", "--out", str(tmp_path / "bad")])
    assert exit_.value.code == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
