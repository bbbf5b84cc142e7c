"""CIFAR-10, UTKFace and IMDB loaders (PROTOCOL.md section 1), on the real copies and on small
fakes of the official layouts."""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.datasets import DataError, load
from bench.datasets import cifar10, imdb, utkface
from bench.datasets.archives import member_names
from bench.representations import row_keys


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_cifar10_jpeg_archive_member_counts(data_root):
    counts = cifar10.count_jpeg_members(data_root / "cifar10" / "cifar10_jpeg.tar.gz")
    assert counts == {"train": 50000, "test": 10000}


@pytest.mark.realdata
def test_cifar10_splits_sizes_and_balance(data_root):
    s = load("cifar10", seed=0, data_root=data_root)
    assert (len(s.train), len(s.aux), len(s.test)) == (25000, 25000, 10000)
    assert s.n_classes == 10 and s.train.X.shape[1] == 3 * 32 * 32
    for part, per_class in ((s.train, 2500), (s.aux, 2500), (s.test, 1000)):
        assert np.bincount(part.y, minlength=10).tolist() == [per_class] * 10
        assert part.X.dtype == np.float32 and 0 <= part.X.min() and part.X.max() <= 1
    # D and D_aux are disjoint (up to images that occur twice in CIFAR-10's training set).
    assert len(set(row_keys(s.train.X)) & set(row_keys(s.aux.X))) < 10
    small = load("cifar10-small", seed=0, data_root=data_root)
    assert (len(small.train), len(small.aux), len(small.test)) == (2500, 2500, 1000)
    assert np.bincount(small.test.y).tolist() == [100] * 10


def _fake_cifar_images(per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    # Smooth images survive JPEG almost unchanged, so both layouts can be compared closely.
    images = np.repeat(np.repeat(images[:, ::8, ::8], 8, axis=1), 8, axis=2)
    return images, labels


def test_cifar10_official_batches_and_jpeg_tree_give_the_same_order(tmp_path, monkeypatch):
    """The python batches (read by torchvision) and the JPEG tree are put in one canonical order:
    by class, then by original position within the class."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    rng = np.random.default_rng(0)
    batches = tmp_path / "official" / cifar10.OFFICIAL_DIR
    batches.mkdir(parents=True)
    images = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        imgs, labels = [], []
        for name in files:
            x, y = _fake_cifar_images(1, rng)
            (batches / name).write_bytes(pickle.dumps(
                {"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": y.tolist()}))
            imgs.append(x)
            labels.append(y)
        images[split] = (np.concatenate(imgs), np.concatenate(labels))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": list(cifar10.CLASSES)}))
    tree = tmp_path / "jpeg"
    for split, (x, y) in images.items():
        seen = np.zeros(10, int)
        for img, label in zip(x, y):
            folder = tree / split / cifar10.CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{seen[label]:04d}.jpg", quality=100, subsampling=0)
            seen[label] += 1

    official = cifar10._official(batches)
    jpeg = cifar10._jpeg_tree(tree)
    for split in ("train", "test"):
        assert np.array_equal(official[f"{split}_labels"], jpeg[f"{split}_labels"])
        assert np.array_equal(official[f"{split}_labels"], np.sort(images[split][1]))
        diff = np.abs(official[f"{split}_images"].astype(int) - jpeg[f"{split}_images"].astype(int))
        assert diff.mean() < 2


def test_cifar10_missing_data_names_what_to_put_where(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*JPEG tree"):
        load("cifar10", data_root=tmp_path)


# --------------------------------------------------------------------------------------------
# UTKFace
# --------------------------------------------------------------------------------------------

MALFORMED_WITHOUT_RACE = {"61_1_20170109150557335.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
                          "39_1_20170116174525125.jpg.chip.jpg"}


@pytest.mark.realdata
def test_utkface_names_count_and_malformed_names_reported(data_root):
    names = member_names(data_root / "utkface" / "UTKFace_64x64.tar.gz", ".jpg")
    assert len(names) == 23708
    parsed = utkface.parse_names(names)
    assert set(parsed.skipped) == MALFORMED_WITHOUT_RACE
    # The two names with a damaged tail (a space, a missing dot) keep their labels.
    files = set(parsed.labels["file"])
    assert "24_0_1_20170116220224657 .jpg.chip.jpg" in files
    assert "55_0_0_20170116232725357jpg.chip.jpg" in files
    assert (parsed.labels["age"] >= 15).sum() == utkface.POOL_SIZE


@pytest.mark.realdata
def test_utkface_splits_sizes_annotations_and_warning(data_root):
    with pytest.warns(UserWarning, match="skipped 3 files") as record:
        s = load("utkface", seed=0, data_root=data_root)
    assert all(name in str(record[0].message) for name in MALFORMED_WITHOUT_RACE)
    assert (len(s.train), len(s.aux), len(s.test)) == (7000, 7000, 6054)
    assert s.n_classes == 2 and s.train.X.shape[1] == 3 * 64 * 64
    pool = np.concatenate([s.train.y, s.aux.y, s.test.y])
    assert np.bincount(pool).tolist() == [10671, 9383]
    for part in (s.train, s.aux):
        assert abs(part.y.mean() - 9383 / 20054) < 1e-3  # stratified by gender
        assert (part.annotations["age"] >= 15).all()
    groups = s.aux.annotations.groupby(["race", "age_bucket"]).size()
    assert len(groups) == 20  # race (5) x age bucket (4), PROTOCOL.md section 3
    assert set(s.aux.annotations["age_bucket"]) == {"15-29", "30-44", "45-59", "60+"}
    assert len(set(s.train.annotations["file"]) & set(s.aux.annotations["file"])) == 0
    assert len(set(s.aux.annotations["file"]) & set(s.test.annotations["file"])) == 0


def test_utkface_reads_official_resolution_folder_and_skips_malformed(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "utkface" / "UTKFace"
    folder.mkdir(parents=True)
    names = ["20_1_2_20170116174525125.jpg.chip.jpg", "70_0_0_20170116174525126.jpg.chip.jpg",
             "39_1_20170116174525125.jpg.chip.jpg"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((200, 200, 3), 40 * i, np.uint8)).save(folder / name)
    images, parsed = utkface.read(tmp_path / "utkface")
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert parsed.skipped == ("39_1_20170116174525125.jpg.chip.jpg",)
    assert parsed.labels[["age", "gender", "race"]].values.tolist() == [[20, 1, 2], [70, 0, 0]]
    assert abs(int(images[1].mean()) - 40) <= 1


# --------------------------------------------------------------------------------------------
# IMDB
# --------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_imdb_archive_review_counts(data_root):
    names = member_names(data_root / "imdb" / "aclImdb_v1.tar.gz", ".txt")
    folders = {}
    for name in names:
        folders[tuple(name.split("/")[-3:-1])] = folders.get(tuple(name.split("/")[-3:-1]), 0) + 1
    assert folders == {(s, l): 12500 for s in ("train", "test") for l in ("pos", "neg")}


@pytest.mark.realdata
def test_imdb_splits_sizes_balance_and_tokens(data_root):
    s = load("imdb", seed=0, data_root=data_root)
    assert (len(s.train), len(s.aux), len(s.test)) == (12500, 12500, 25000)
    assert np.bincount(s.train.y).tolist() == [6250, 6250]
    assert np.bincount(s.aux.y).tolist() == [6250, 6250]
    assert np.bincount(s.test.y).tolist() == [12500, 12500]
    assert s.train.X.shape == (12500, imdb.MAX_TOKENS)
    assert (s.test.X[:, 0] == imdb.CLS_ID).all()
    assert s.test.X.max() < imdb.VOCAB_SIZE
    ids = lambda p: set(zip(p.annotations["id"], p.y))  # noqa: E731
    assert not ids(s.train) & ids(s.aux)
    # Ratings agree with the labels (positive reviews are rated >= 7, negative <= 4).
    assert (s.test.annotations["rating"][s.test.y == 1] >= 7).all()
    assert (s.test.annotations["rating"][s.test.y == 0] <= 4).all()


def _fake_aclimdb(root: Path) -> Path:
    texts = {("train", "pos"): ["Great film.", "Loved it <br /> a lot"],
             ("train", "neg"): ["Dull.", "Awful acting, ünïcode"],
             ("test", "pos"): ["Wonderful"], ("test", "neg"): ["Boring and long"]}
    for (split, label), reviews in texts.items():
        folder = root / "aclImdb" / split / label
        folder.mkdir(parents=True)
        for i, text in enumerate(reviews):
            rating = 9 - i if label == "pos" else 1 + i
            (folder / f"{10 - i}_{rating}.txt").write_text(text, encoding="utf-8")
    (root / "aclImdb" / "README").write_text("readme")
    (root / "aclImdb" / "train" / "urls_pos.txt").write_text("http://x\n")
    return root / "aclImdb"


def test_imdb_archive_and_folder_give_identical_reviews(tmp_path):
    folder = _fake_aclimdb(tmp_path / "tree")
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
    from_folder = imdb.read_reviews(folder)
    from_archive = imdb.read_reviews(archive)
    assert len(from_folder) == 6
    assert from_folder.equals(from_archive)
    assert from_folder["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert "Awful acting, ünïcode" in from_folder["text"].tolist()


def test_imdb_missing_data_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(imdb, "read_hub", lambda: (_ for _ in ()).throw(DataError("offline")))
    with pytest.raises(DataError, match="aclImdb_v1.tar.gz"):
        load("imdb", data_root=tmp_path)
