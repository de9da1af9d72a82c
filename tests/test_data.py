import hashlib
import pickle

import numpy as np
import pytest

from harness.data import (
    DataError,
    TrainBatches,
    augment,
    cifar10,
    eval_batches,
    load_dataset,
    synthetic,
)
from harness.data.cifar10 import load_cifar10
from harness.data.dataset import Split


@pytest.mark.parametrize("layout", ["py", "bin"])
def test_official_layouts_read_back_exactly(official_cifar, layout):
    folder = official_cifar.py_dir if layout == "py" else official_cifar.bin_dir
    for data_dir in [folder] + ([official_cifar.root] if layout == "py" else []):
        data = load_cifar10(data_dir)
        assert data.source == {"py": "cifar10:py:unofficial", "bin": "cifar10:bin"}[layout]
        np.testing.assert_array_equal(data.train.images, official_cifar.train_images)
        np.testing.assert_array_equal(data.train.labels, official_cifar.train_labels)
        np.testing.assert_array_equal(data.test.images, official_cifar.test_images)
        np.testing.assert_array_equal(data.test.labels, official_cifar.test_labels)
        assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int32


def test_plane_order_is_decoded_to_nhwc(official_cifar):
    # In the files a row holds the 1024 red values, then green, then blue.
    raw = np.fromfile(official_cifar.bin_dir / "test_batch.bin", dtype=np.uint8)[:3073]
    image = load_cifar10(official_cifar.bin_dir).test.images[0]
    assert image[0, 1, 0] == raw[1 + 1]  # red of row 0, column 1
    assert image[2, 0, 1] == raw[1 + 1024 + 2 * 32]  # green of row 2, column 0
    assert image[31, 31, 2] == raw[3072]  # last blue value


def test_python_layout_is_preferred_when_both_are_present(official_cifar):
    assert load_cifar10(official_cifar.root).source.startswith("cifar10:py")


def test_only_files_with_the_published_md5_sums_are_labelled_official(official_cifar, monkeypatch):
    # The fixture's files are not the official bytes; make the table name their sums.
    sums = {
        name: hashlib.md5((official_cifar.py_dir / name).read_bytes()).hexdigest()
        for name in cifar10.OFFICIAL_PY_MD5
    }
    monkeypatch.setattr(cifar10, "OFFICIAL_PY_MD5", sums)
    assert load_cifar10(official_cifar.py_dir).source == "cifar10:py:official"
    monkeypatch.setitem(sums, "test_batch", "0" * 32)
    assert load_cifar10(official_cifar.py_dir).source == "cifar10:py:unofficial"


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_folder_without_a_layout_says_what_it_needs(tmp_path):
    with pytest.raises(
        DataError, match="holds neither cifar-10-batches-py/ nor cifar-10-batches-bin/"
    ):
        load_cifar10(tmp_path)


def test_missing_batch_is_an_error_not_a_smaller_data_set(official_cifar):
    (official_cifar.py_dir / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        load_cifar10(official_cifar.py_dir)


def test_truncated_binary_batch_names_the_file(official_cifar):
    path = official_cifar.bin_dir / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        DataError, match="data_batch_2.bin: .* not a whole number of 3073-byte records"
    ):
        load_cifar10(official_cifar.bin_dir)


def test_truncated_python_batch_names_the_file(official_cifar):
    path = official_cifar.py_dir / "test_batch"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR-10 Python batch"):
        load_cifar10(official_cifar.py_dir)


def test_foreign_file_names_the_file(official_cifar):
    (official_cifar.py_dir / "data_batch_1").write_text("<html>not found</html>")
    with pytest.raises(DataError, match="data_batch_1: not a readable CIFAR-10 Python batch"):
        load_cifar10(official_cifar.py_dir)


def test_pickle_that_would_run_code_is_refused(official_cifar, tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (official_cifar.py_dir / "data_batch_4").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_cifar10(official_cifar.py_dir)


def test_wrong_shapes_are_refused(official_cifar):
    record = {b"data": np.zeros((10, 1024), np.uint8), b"labels": [0] * 10}
    (official_cifar.py_dir / "data_batch_5").write_bytes(pickle.dumps(record, protocol=2))
    with pytest.raises(
        DataError, match=r"data_batch_5: b'data' must be uint8 of shape \(N, 3072\)"
    ):
        load_cifar10(official_cifar.py_dir)


def test_label_count_mismatch_is_refused(official_cifar):
    record = {b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 9}
    (official_cifar.py_dir / "data_batch_5").write_bytes(pickle.dumps(record, protocol=2))
    with pytest.raises(DataError, match="data_batch_5: 10 images but 9 labels"):
        load_cifar10(official_cifar.py_dir)


def test_labels_out_of_range_are_refused(official_cifar):
    path = official_cifar.bin_dir / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[0] = 12
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch.bin: labels must lie in 0..9; found 0..12"):
        load_cifar10(official_cifar.bin_dir)


def test_limits_take_the_head_and_refuse_more_than_there_is(official_cifar):
    data = load_cifar10(official_cifar.root)
    small = data.limited(100, 20)
    assert (len(small.train), len(small.test)) == (100, 20)
    np.testing.assert_array_equal(small.train.images, data.train.images[:100])
    with pytest.raises(DataError, match="train_size 1000 is larger than the 250 train images"):
        data.limited(1000, None)


def test_synthetic_is_deterministic_and_well_formed():
    a, b = synthetic(500, 100), synthetic(500, 100)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (500, 32, 32, 3) and a.train.images.dtype == np.uint8
    assert set(np.unique(a.train.labels)) == set(range(10))


def test_unknown_dataset_and_missing_data_dir_are_explained():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", None)
    with pytest.raises(DataError, match="dataset cifar10 needs --data-dir"):
        load_dataset("cifar10", None)


def _split(count: int = 300) -> Split:
    images = np.arange(count * 3072, dtype=np.uint64).reshape(count, 32, 32, 3) % 251
    return Split(images.astype(np.uint8), (np.arange(count) % 10).astype(np.int32))


def test_batches_are_a_function_of_seed_and_step_only():
    split = _split()
    whole = list(TrainBatches(split, 32, seed=3, augment=True, stop=20))
    resumed = list(TrainBatches(split, 32, seed=3, augment=True, start=12, stop=20, prefetch=1))
    assert [b.step for b in whole] == list(range(20))
    for a, b in zip(whole[12:], resumed, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    other = next(iter(TrainBatches(split, 32, seed=4, augment=True, stop=1)))
    assert not np.array_equal(other.labels, whole[0].labels) or not np.array_equal(
        other.images, whole[0].images
    )


def test_an_epoch_visits_every_image_once_and_drops_the_ragged_end():
    split = _split(100)
    batches = list(TrainBatches(split, 32, seed=0, augment=False, stop=6))
    assert [b.epoch for b in batches] == [0, 0, 0, 1, 1, 1]
    seen = np.concatenate([b.images[:, 0, 0, 0] for b in batches[:3]])
    assert len(set(seen.tolist())) == 96  # 3 full batches of distinct images


def test_augmentation_crops_from_a_reflection_pad_and_flips():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    out = augment(images, np.random.default_rng(1))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    flips = 0
    for pad, crop in zip(padded, out, strict=True):
        candidates = [pad[y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        plain = any(np.array_equal(crop, c) for c in candidates)
        flipped = any(np.array_equal(crop, c[:, ::-1]) for c in candidates)
        assert plain or flipped
        flips += flipped and not plain
    assert 16 < flips < 48  # about half are flipped


def test_pipeline_errors_reach_the_consumer():
    split = _split(10)
    with pytest.raises(DataError, match="batch size 32 is larger than the 10 training images"):
        TrainBatches(split, 32, seed=0, augment=False, stop=1)


def test_eval_batches_cover_the_whole_split_in_order():
    split = _split(250)
    batches = list(eval_batches(split, 100))
    assert [len(labels) for _, labels in batches] == [100, 100, 50]
    np.testing.assert_array_equal(np.concatenate([images for images, _ in batches]), split.images)


def test_real_cifar10_subset_reads_in_both_layouts(real_cifar):
    py = load_cifar10(real_cifar / "cifar-10-batches-py")
    binary = load_cifar10(real_cifar / "cifar-10-batches-bin")
    assert py.train.images.shape == (5000, 32, 32, 3) and py.test.images.shape == (1000, 32, 32, 3)
    np.testing.assert_array_equal(py.train.images, binary.train.images)
    np.testing.assert_array_equal(py.test.labels, binary.test.labels)
    assert np.bincount(py.train.labels).tolist() == [500] * 10
    means = py.train.images.reshape(-1, 3).mean(axis=0)
    # The data README gives 125.3, 122.9, 113.9 on the whole set.
    np.testing.assert_allclose(means, [125.3, 122.9, 113.9], atol=4)
