import numpy as np

from imgcls.data.splits import split_indices

LABELS = np.array([0] * 50 + [1] * 30 + [2] * 20)


def test_stratified_keeps_proportions_and_is_reproducible():
    train, val = split_indices(LABELS, 0.2, "stratified", seed=3)
    assert np.bincount(LABELS[val]).tolist() == [10, 6, 4]
    assert set(train).isdisjoint(val) and len(train) + len(val) == 100
    again = split_indices(LABELS, 0.2, "stratified", seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, split_indices(LABELS, 0.2, "stratified", seed=4)[1])


def test_random_split_size():
    train, val = split_indices(LABELS, 0.25, "random", seed=0)
    assert len(val) == 25 and len(train) == 75 and set(train).isdisjoint(val)


def test_balanced_split_has_equal_counts_per_class():
    train, val = split_indices(LABELS, 0.2, "balanced", seed=0)
    assert np.bincount(LABELS[train]).tolist() == [16, 16, 16]
    assert np.bincount(LABELS[val]).tolist() == [4, 4, 4]
