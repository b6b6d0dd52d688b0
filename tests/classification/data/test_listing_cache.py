"""The cached listing of the ImageNet training folders: the same records as a fresh listing, and a new
or removed image (which changes its folder's modification time) lists the folders again."""

import os

import pytest

from classification.data import imagenet
from classification.data.ilsvrc import Synsets
from classification.data.imagenet import DATA_DIR, ImageRecord, list_train_images
from resnet_engine.file_cache import cache_path

SYNSETS = Synsets(("n02", "n01", "n03"), ("b", "a", "c"))  # label order is the list's, not sorted


def make_tree(root, files):
    for relative in files:
        path = root / DATA_DIR / "train" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def expected_records(root, files):
    """Hand-made: label = position of the folder's WNID in SYNSETS, images sorted by name per class."""
    train = os.path.join(str(root), DATA_DIR, "train")
    return [ImageRecord(os.path.splitext(os.path.basename(f))[0], os.path.join(train, f), SYNSETS.wnids.index(w))
            for w in SYNSETS.wnids for f in sorted(f for f in files if f.startswith(w + "/"))]


@pytest.fixture
def listings(monkeypatch):
    counts = [0]
    original = imagenet.list_class_folders

    def counting(*args):
        counts[0] += 1
        return original(*args)

    monkeypatch.setattr(imagenet, "list_class_folders", counting)
    return counts


FILES = ["n01/n01_2.JPEG", "n01/n01_1.JPEG", "n02/n02_9.png", "n03/n03_1.JPEG"]


def test_the_cached_listing_equals_a_fresh_one(tmp_path, listings):
    make_tree(tmp_path, FILES + ["n01/notes.txt"])
    assert list_train_images(str(tmp_path), SYNSETS) == expected_records(tmp_path, FILES)
    assert list_train_images(str(tmp_path), SYNSETS) == expected_records(tmp_path, FILES)
    assert listings[0] == 1


def test_an_added_or_removed_image_lists_again(tmp_path, listings):
    make_tree(tmp_path, FILES)
    list_train_images(str(tmp_path), SYNSETS)
    class_dir = tmp_path / DATA_DIR / "train" / "n03"
    before = os.stat(class_dir).st_mtime_ns
    make_tree(tmp_path, ["n03/n03_0.JPEG"])
    os.utime(class_dir, ns=(before, before + 1_000_000))  # as a later second would
    assert list_train_images(str(tmp_path), SYNSETS) == expected_records(tmp_path, FILES + ["n03/n03_0.JPEG"])
    os.remove(tmp_path / DATA_DIR / "train" / "n01" / "n01_1.JPEG")
    os.utime(tmp_path / DATA_DIR / "train" / "n01", ns=(before, before + 2_000_000))
    remaining = [f for f in FILES if f != "n01/n01_1.JPEG"] + ["n03/n03_0.JPEG"]
    assert list_train_images(str(tmp_path), SYNSETS) == expected_records(tmp_path, remaining)
    assert listings[0] == 3


def test_a_cache_with_a_class_missing_is_rebuilt(tmp_path, listings):
    make_tree(tmp_path, FILES)
    list_train_images(str(tmp_path), SYNSETS)
    path = cache_path("train-listing", os.path.join(str(tmp_path), DATA_DIR, "train"))
    text = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace('"payload":[["n02_9.png"],', '"payload":['))
    with pytest.warns(UserWarning, match="2 class entries for 3 classes"):
        assert list_train_images(str(tmp_path), SYNSETS) == expected_records(tmp_path, FILES)
    assert listings[0] == 2


def test_folders_the_list_lacks_and_classes_without_images_are_said(tmp_path):
    make_tree(tmp_path, ["n01/n01_1.JPEG", "n02/n02_1.JPEG", "n09/n09_1.JPEG", "n08/n08_1.JPEG"])  # no n03
    with pytest.warns(UserWarning) as caught:
        records = list_train_images(str(tmp_path), Synsets(SYNSETS.wnids, SYNSETS.names, source="synsets.txt"))
    assert sorted(os.path.basename(r.path) for r in records) == ["n01_1.JPEG", "n02_1.JPEG"]
    train = tmp_path / DATA_DIR / "train"
    assert [str(w.message) for w in caught] == [
        f"{train}: 2 class folders are not in synsets.txt and are not trained on (e.g. n08, n09): add them to the list to "
        f"train on them",
        f"{train}: 1 of the 3 classes of synsets.txt have no training images (e.g. n03): the network never sees them"]
