"""CIFAR-10 from its official files, in either official layout.

* Python layout (``cifar-10-batches-py/``, as torchvision and the official
  Python tarball hold it): pickled dicts with ``data`` (N x 3072 uint8, each row
  the red, green and blue planes of a 32x32 image) and ``labels``.
* Binary layout (``cifar-10-batches-bin/``): records of one label byte and 3072
  pixel bytes in the same plane order.

Both have ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``. The pickles
are read with an unpickler that admits only the numpy types those files use,
so a foreign pickle cannot run code. Every problem names the file and what was
expected; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

from harness.data.dataset import DataError, Dataset, Split

PY_DIR = "cifar-10-batches-py"
BIN_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
NUM_CLASSES = 10

# The md5 sums published for the official Python-layout files (the ones torchvision
# checks after a download). A copy whose bytes differ, such as one re-encoded
# through JPEG, is labelled so in every row: its accuracies are not the paper's.
OFFICIAL_PY_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

FETCH_HINT = (
    "download it with `wrnbench fetch --data-dir DIR` on a machine with network access, "
    "or unpack the official cifar-10-python.tar.gz there"
)


def find_layout(data_dir: Path) -> tuple[str, Path]:
    """('py' | 'bin', folder) for the first official layout found in data_dir."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: no such folder; it should hold {PY_DIR}/ or {BIN_DIR}/ ({FETCH_HINT})"
        )
    for layout, folder, marker in (
        ("py", data_dir / PY_DIR, "data_batch_1"),
        ("bin", data_dir / BIN_DIR, "data_batch_1.bin"),
        ("py", data_dir, "data_batch_1"),
        ("bin", data_dir, "data_batch_1.bin"),
    ):
        if (folder / marker).is_file():
            return layout, folder
    raise DataError(
        f"{data_dir}: holds neither {PY_DIR}/ nor {BIN_DIR}/ with data_batch_1..5 ({FETCH_HINT})"
    )


def load_cifar10(data_dir: str | Path) -> Dataset:
    layout, folder = find_layout(Path(data_dir))
    read = _read_python_batch if layout == "py" else _read_binary_batch
    suffix = "" if layout == "py" else ".bin"
    train = [read(_require(folder / f"{name}{suffix}")) for name in TRAIN_FILES]
    test = read(_require(folder / f"{TEST_FILE}{suffix}"))
    images = np.concatenate([images for images, _ in train])
    labels = np.concatenate([labels for _, labels in train])
    return Dataset(
        train=Split(images, labels),
        test=Split(*test),
        source=f"cifar10:{layout}{_provenance(layout, folder)}",
        location=str(folder),
    )


def _provenance(layout: str, folder: Path) -> str:
    """':official' or ':unofficial' for the Python layout; '' where no sums are published."""
    if layout != "py":
        return ""
    for name, expected in OFFICIAL_PY_MD5.items():
        with open(folder / name, "rb") as file:
            if hashlib.file_digest(file, "md5").hexdigest() != expected:
                return ":unofficial"
    return ":official"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(
            f"{path}: missing; an official CIFAR-10 layout has {', '.join(TRAIN_FILES)} and {TEST_FILE}"
        )
    return path


def _planes_to_nhwc(flat: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{path}: labels must lie in 0..{NUM_CLASSES - 1}; found {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int32)


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte records "
            "(1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 batch"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    return _planes_to_nhwc(records[:, 1:]), _check_labels(path, records[:, 0])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the globals a CIFAR-10 pickle needs and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # a truncated or foreign file can fail in many ways
        raise DataError(
            f"{path}: not a readable CIFAR-10 Python batch ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(
            f"{path}: expected a pickled dict with b'data' and b'labels'; got {type(batch).__name__}"
        )
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(
            f"{path}: expected b'data' (a uint8 array) and b'labels'; found keys {sorted(batch)}"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES or not len(data):
        raise DataError(
            f"{path}: b'data' must be uint8 of shape (N, {IMAGE_BYTES}) with N >= 1; got {data.dtype} {data.shape}"
        )
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {data.shape[0]} images but {labels.shape[0] if labels.ndim else 0} labels"
        )
    return _planes_to_nhwc(data), _check_labels(path, labels)
