"""CIFAR-10/100 files, the paper's data protocol and the synthetic set, against hand-built bytes,
Python 2 style pickles, NumPy and torchvision."""

import dataclasses
import logging
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from classification.data import cifar, cifar_dataset
from classification.data.cifar import (
    LAYOUTS,
    CifarError,
    find_cifar,
    read_binary_batch,
    read_class_names,
    read_python_batch,
    read_split,
    write_binary_batch,
    write_class_names,
    write_python_batch,
)
from classification.data.cifar_dataset import (
    CifarDataset,
    augmentation_draws,
    build_cifar_sets,
    held_out_count,
    load_pixel_mean,
    pixel_mean,
    save_pixel_mean,
    select_split,
    warn_if_not_the_papers_split,
)
from classification.data.synthetic_cifar import (
    CLASS_ANGLES,
    CLASSES,
    SyntheticCifarSpec,
    ensure_synthetic_cifar,
    generate_synthetic_cifar,
    render_image,
)
from resnet_engine.loaders import build_test_loader, build_train_loader
from resnet_engine.sampler import GroupedBatchSampler

from .official_pickle import python2_pickle

BIN10, PY10, BIN100, PY100 = LAYOUTS
REDOWNLOAD = "download and extract the archive again"


def random_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)


def write_cifar10(root, layout=BIN10, per_file: int = 4, test: int = 3, seed: int = 0):
    """A small CIFAR-10 folder of ``layout`` written by our writers; returns (folder, train, test) arrays."""
    folder = os.path.join(str(root), layout.folder)
    writer = write_binary_batch if layout.version == "binary" else write_python_batch
    train_images, train_labels = [], []
    for k, name in enumerate(layout.train_files):
        images, labels = random_images(per_file, seed + k), (np.arange(per_file) + k) % 10
        writer(os.path.join(folder, name), images, labels)
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels = random_images(test, seed + 99), np.arange(test) % 10
    writer(os.path.join(folder, layout.test_files[0]), test_images, test_labels)
    write_class_names(folder, layout, [f"class{i}" for i in range(10)])
    return folder, (np.concatenate(train_images), np.concatenate(train_labels)), (test_images, test_labels)


def record(label_bytes: list[int], image: np.ndarray) -> bytes:
    """One binary record built by hand: the label bytes, then the R, G and B planes row by row."""
    planes = b"".join(bytes(image[..., c].ravel().tolist()) for c in range(3))  # image is H x W x RGB
    return bytes(label_bytes) + planes


# --------------------------------------------------------------------------------------------- binary version


def test_binary_round_trip_and_the_bytes_on_disk(tmp_path):
    folder, (train_images, train_labels), (test_images, test_labels) = write_cifar10(tmp_path)
    source = find_cifar(str(tmp_path))
    assert source.layout is BIN10 and source.folder == folder
    train, test = read_split(source, "train"), read_split(source, "test")
    np.testing.assert_array_equal(train.images, train_images)
    np.testing.assert_array_equal(train.labels, train_labels)
    np.testing.assert_array_equal(test.images, test_images)
    np.testing.assert_array_equal(test.labels, test_labels)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64 and train.coarse_labels is None
    # The file itself, read without the reader: 1 label byte, then 1024 R, 1024 G, 1024 B values.
    raw = open(os.path.join(folder, "data_batch_2.bin"), "rb").read()
    assert len(raw) == 4 * 3073
    second = raw[3073:2 * 3073]
    assert second[0] == train_labels[5]
    assert second[1:1025] == train_images[5, 0].tobytes()  # red plane, row-major
    assert second[1025 + 33] == train_images[5, 1, 1, 1]  # green at row 1, column 1
    assert read_class_names(source) == [f"class{i}" for i in range(10)]


def test_a_red_pixel_stays_red(tmp_path):
    image = np.zeros((32, 32, 3), dtype=np.uint8)  # H x W x RGB, as an image library holds it
    image[2, 5] = (255, 0, 0)
    image[7, 1] = (0, 0, 200)
    path = tmp_path / "one.bin"
    path.write_bytes(record([3], image))
    batch = read_binary_batch(str(path))
    np.testing.assert_array_equal(batch.images[0].transpose(1, 2, 0), image)
    assert batch.images[0, 0, 2, 5] == 255 and batch.images[0, 1:, 2, 5].tolist() == [0, 0]
    assert batch.images[0, 2, 7, 1] == 200 and batch.labels.tolist() == [3]
    # Through the dataset (a zero mean): channel 0 of the tensor is red.
    sample = CifarDataset(batch, np.zeros((3, 32, 32), np.float32), train=False)[0]
    assert sample["image"][:, 2, 5].tolist() == [255.0, 0.0, 0.0] and sample["label"] == 3


def test_cifar100_binary_coarse_and_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    images = [np.full((32, 32, 3), v, dtype=np.uint8) for v in (10, 20)]
    (folder / "train.bin").write_bytes(record([3, 57], images[0]) + record([19, 99], images[1]))
    (folder / "test.bin").write_bytes(record([0, 0], images[0]))
    write_class_names(str(folder), BIN100, [f"f{i}" for i in range(100)], [f"c{i}" for i in range(20)])
    source = find_cifar(str(tmp_path))
    train = read_split(source, "train")
    assert source.layout is BIN100
    assert train.labels.tolist() == [57, 99] and train.coarse_labels.tolist() == [3, 19]
    assert train.images[1].min() == train.images[1].max() == 20
    assert read_class_names(source)[57] == "f57" and read_class_names(source, coarse=True)[19] == "c19"
    # Our writer puts the coarse byte first as well.
    write_binary_batch(str(folder / "again.bin"), train.images, train.labels, train.coarse_labels)
    assert (folder / "again.bin").read_bytes() == (folder / "train.bin").read_bytes()


# --------------------------------------------------------------------------------------------- python version


def test_python_round_trip(tmp_path):
    folder, (train_images, train_labels), (test_images, test_labels) = write_cifar10(tmp_path, PY10)
    source = find_cifar(str(tmp_path))
    assert source.layout is PY10
    train = read_split(source, "train")
    np.testing.assert_array_equal(train.images, train_images)
    np.testing.assert_array_equal(train.labels, train_labels)
    np.testing.assert_array_equal(read_split(source, "test").images, test_images)
    assert read_class_names(source) == [f"class{i}" for i in range(10)]
    # The unrestricted unpickler sees the official keys and layout.
    with open(os.path.join(folder, "data_batch_1"), "rb") as handle:
        content = pickle.load(handle, encoding="bytes")
    assert sorted(content) == [b"batch_label", b"data", b"filenames", b"labels"]
    np.testing.assert_array_equal(content[b"data"][1], train_images[1].ravel())


def test_python2_pickles_like_the_official_files(tmp_path):
    data = random_images(3, 5)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = python2_pickle({b"batch_label": b"training batch 1 of 5", b"labels": [7, 0, 9],
                            b"data": data.reshape(3, 3072), b"filenames": [b"a.png", b"b.png", b"c.png"]})
    assert batch.startswith(b"\x80\x02}q\x01(U\x0bbatch_labelq\x02") and b"cnumpy.core.multiarray\n_reconstruct" in batch
    for name in PY10.train_files + PY10.test_files:
        (folder / name).write_bytes(batch)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(python2_pickle({b"num_cases_per_batch": 3, b"label_names": names,
                                                          b"num_vis": 3072}))
    source = find_cifar(str(folder))
    train = read_split(source, "train")
    assert len(train) == 15
    np.testing.assert_array_equal(train.images[:3], data)
    assert train.labels.tolist() == [7, 0, 9] * 5
    assert read_class_names(source)[1] == "automobile"
    reference = pickle.loads(batch, encoding="bytes")  # the unrestricted unpickler agrees
    np.testing.assert_array_equal(reference[b"data"].reshape(-1, 3, 32, 32), data)


def test_cifar100_python_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    images = random_images(4, 1)
    fine, coarse = [5, 99, 0, 42], [1, 19, 0, 7]
    for name in ("train", "test"):
        write_python_batch(str(folder / name), images, fine, coarse)
    write_class_names(str(folder), PY100, [f"f{i}" for i in range(100)], [f"c{i}" for i in range(20)])
    source = find_cifar(str(tmp_path), num_classes=100)
    train = read_split(source, "train")
    assert train.labels.tolist() == fine and train.coarse_labels.tolist() == coarse
    np.testing.assert_array_equal(train.images, images)
    assert read_class_names(source, coarse=True)[7] == "c7"
    # An official-style CIFAR-100 pickle reads the same.
    (folder / "train").write_bytes(python2_pickle({b"filenames": [b"a"] * 4, b"batch_label": b"training batch 1 of 1",
                                                   b"fine_labels": fine, b"coarse_labels": coarse,
                                                   b"data": images.reshape(4, 3072)}))
    again = read_python_batch(str(folder / "train"), 100)
    assert again.labels.tolist() == fine and again.coarse_labels.tolist() == coarse


class RunsCode:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_pickle_holding_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": RunsCode()}, protocol=2))
    assert pickle.loads(path.read_bytes()) == {"data": None}  # an unrestricted unpickler calls print
    assert "pickled code ran" in capsys.readouterr().out
    with pytest.raises(CifarError) as error:
        read_python_batch(str(path))
    assert str(error.value) == (
        f"{path} was refused as unsafe: it names __builtin__.print, and a CIFAR python batch holds nothing but "
        "numpy arrays, lists, bytes and numbers (loading it could run code): use the official file, or the binary "
        "version of the dataset")
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------------------------- bad input


def test_a_missing_file_stops_before_any_file_is_read(tmp_path, monkeypatch):
    folder, _, _ = write_cifar10(tmp_path)
    os.remove(os.path.join(folder, "data_batch_3.bin"))
    calls = []
    monkeypatch.setattr(cifar, "read_binary_batch", lambda *args: calls.append(args))
    with pytest.raises(CifarError) as error:
        read_split(find_cifar(str(tmp_path)), "train")
    assert str(error.value) == (f"CIFAR file not found: {folder}/data_batch_3.bin ({folder} is incomplete: "
                                f"{REDOWNLOAD})")
    assert calls == []


@pytest.mark.parametrize("size", [0, 3073 * 2 - 100])
def test_a_truncated_binary_file(tmp_path, size):
    path = tmp_path / "test_batch.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(CifarError) as error:
        read_binary_batch(str(path))
    assert str(error.value) == (
        f"{path}: {size} bytes are not a whole number of 3073-byte records (1 label byte and 3072 pixel bytes "
        f"each): the file is truncated or not a CIFAR-10 binary batch ({REDOWNLOAD})")


def test_a_batch_cut_at_a_record_boundary(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    path = os.path.join(folder, "data_batch_4.bin")
    with open(path, "r+b") as handle:
        handle.truncate(3 * 3073)
    with pytest.raises(CifarError) as error:
        read_split(find_cifar(str(tmp_path)), "train")
    assert str(error.value) == (f"{path} holds 3 images and {folder}/data_batch_1.bin 4: one of them is truncated "
                                f"({REDOWNLOAD})")


def test_labels_outside_the_classes(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    image = np.zeros((32, 32, 3), np.uint8)
    path.write_bytes(record([9], image) + record([10], image))
    with pytest.raises(CifarError) as error:
        read_binary_batch(str(path))
    assert str(error.value) == (f"{path}: record 1 (counting from 0) has label 10, outside CIFAR-10's 10 classes "
                                f"(0 to 9): the file is damaged or not a CIFAR-10 batch ({REDOWNLOAD})")
    path.write_bytes(record([20, 5], image))
    with pytest.raises(CifarError) as error:
        read_binary_batch(str(path), 100)
    assert str(error.value) == (f"{path}: record 0 (counting from 0) has coarse label 20, outside CIFAR-100's 20 "
                                f"classes (0 to 19): the file is damaged or not a CIFAR-100 batch ({REDOWNLOAD})")
    python = tmp_path / "test_batch"
    write_python_batch(str(python), random_images(2, 0), [3, -1])
    with pytest.raises(CifarError) as error:
        read_python_batch(str(python))
    assert str(error.value).startswith(f"{python}: record 1 (counting from 0) has label -1, outside CIFAR-10's 10")


def test_python_batches_that_hold_other_things(tmp_path):
    path = tmp_path / "data_batch_1"

    def message(content) -> str:
        path.write_bytes(content if isinstance(content, bytes) else pickle.dumps(content, protocol=3))
        with pytest.raises(CifarError) as error:
            read_python_batch(str(path))
        return str(error.value)

    rows = np.zeros((2, 3072), np.uint8)
    assert message([1, 2]) == f"{path} holds a list, not the dict of a CIFAR python file"
    assert message({b"labels": [1, 2]}) == (f"{path} has no 'data' entry (it holds 'labels'): it is not a CIFAR-10 "
                                            f"python batch")
    assert message({b"data": rows.astype(np.float64), b"labels": [1, 2]}) == (
        f"{path}: 'data' is a float64 array of shape (2, 3072); a CIFAR-10 python batch holds uint8 rows of 3072 "
        f"pixels, one per image")
    assert message({b"data": rows, b"labels": [1]}) == (
        f"{path} holds 1 'labels' for 2 images: the file is damaged ({REDOWNLOAD})")
    assert message({b"data": rows, b"labels": [b"a", b"b"]}) == (
        f"{path}: 'labels' must be a list of integer labels, not a list")
    whole = python2_pickle({b"data": rows, b"labels": [1, 2]})
    assert message(whole[:-40]).startswith(f"{path} cannot be read as a CIFAR python batch (")
    assert message(whole[:-40]).endswith(f"): the file is truncated or damaged ({REDOWNLOAD})")


def test_folders_without_cifar(tmp_path):
    with pytest.raises(CifarError) as error:
        find_cifar(str(tmp_path / "nowhere"))
    assert str(error.value) == (f"CIFAR folder not found: {tmp_path}/nowhere (set data.root to the folder holding "
                                f"cifar-10-batches-bin, or to that folder itself)")
    (tmp_path / "photos").mkdir()
    with pytest.raises(CifarError) as error:
        find_cifar(str(tmp_path))
    assert str(error.value) == (
        f"{tmp_path} holds no CIFAR folder (cifar-10-batches-bin, cifar-10-batches-py, cifar-100-binary, "
        f"cifar-100-python): set data.root to the folder where the official archive was extracted")
    write_cifar10(tmp_path)
    (tmp_path / "cifar-100-binary").mkdir()
    with pytest.raises(CifarError) as error:
        find_cifar(str(tmp_path))
    assert str(error.value) == (f"{tmp_path} holds both CIFAR-10 and CIFAR-100: set data.root to "
                                f"{tmp_path}/cifar-10-batches-bin or the other folder")
    assert find_cifar(str(tmp_path), num_classes=100).layout is BIN100

    only100 = tmp_path / "only100"
    (only100 / "cifar-100-python").mkdir(parents=True)
    with pytest.raises(CifarError) as error:
        find_cifar(str(only100), num_classes=10)
    assert str(error.value) == (f"{only100} holds CIFAR-100 (cifar-100-python), not cifar-10-batches-bin, "
                                f"cifar-10-batches-py: set data.dataset=cifar100 (and a cifar100_* config)")


def test_class_name_files(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    meta = os.path.join(folder, "batches.meta.txt")
    with open(meta, "w") as handle:
        handle.write("cat\ndog\n\n")
    with pytest.raises(CifarError) as error:
        read_class_names(find_cifar(folder))
    assert str(error.value) == (f"{meta} names 2 classes and CIFAR-10 has 10: the file is damaged or of another "
                                f"dataset ({REDOWNLOAD})")
    with open(meta, "wb") as handle:
        handle.write(b"cat\n\xff\xfe\n")
    with pytest.raises(CifarError) as error:
        read_class_names(find_cifar(folder))
    assert str(error.value) == f"{meta} is not UTF-8 text: the file is damaged ({REDOWNLOAD})"
    os.remove(meta)
    with pytest.warns(UserWarning, match="batches.meta.txt not found: the classes are named by their numbers"):
        assert read_class_names(find_cifar(folder)) == [str(i) for i in range(10)]


def test_the_binary_version_is_preferred_and_named(tmp_path, caplog):
    write_cifar10(tmp_path, PY10)
    write_cifar10(tmp_path, BIN10)
    with caplog.at_level(logging.INFO, logger="classification.data.cifar"):
        source = find_cifar(str(tmp_path))
    assert source.layout is BIN10
    assert f"reading CIFAR-10 (binary version) from {tmp_path}/cifar-10-batches-bin" in caplog.text
    renamed = tmp_path / "my_copy"
    os.rename(tmp_path / "cifar-10-batches-py", renamed)
    assert find_cifar(str(renamed)).layout is PY10  # the folder itself, found by its files


# --------------------------------------------------------------------------------------------- protocol


def test_the_paper_split_sizes_and_their_order(tmp_path):
    assert held_out_count(50000, None) == 5000 and held_out_count(50000, 1000) == 1000
    _, (train_images, train_labels), _ = write_cifar10(tmp_path, per_file=10)
    training = read_split(find_cifar(str(tmp_path)), "train")
    train, val = select_split(training, "train"), select_split(training, "val")
    assert (len(train), len(val), len(select_split(training, "trainval"))) == (45, 5, 50)
    np.testing.assert_array_equal(val.images, train_images[45:])  # the last images of data_batch_5
    np.testing.assert_array_equal(train.labels, train_labels[:45])
    again = select_split(read_split(find_cifar(str(tmp_path)), "train"), "val")
    np.testing.assert_array_equal(again.images, val.images)
    with pytest.raises(CifarError) as error:
        select_split(training, "val", val_images=50)
    assert str(error.value) == ("val_images=50 must leave images on both sides of the split: give a number between "
                                "1 and 49 (the training files hold 50)")


def test_the_mean_image_is_the_training_splits(tmp_path):
    _, (train_images, train_labels), (test_images, _) = write_cifar10(tmp_path, per_file=10)
    sets = build_cifar_sets(str(tmp_path), train_split="train", test_split="val")
    expected = train_images[:45].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(sets.mean, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(pixel_mean(train_images[:45], chunk=7), expected, rtol=0, atol=1e-4)
    first_val = sets.test[0]["image"].numpy()  # test views: the image minus the mean, nothing else
    np.testing.assert_allclose(first_val, train_images[45] - expected, rtol=0, atol=1e-4)
    assert sets.test[0]["label"] == train_labels[45] and len(sets.train) == 45
    path = str(tmp_path / "run" / "pixel_mean.npy")
    save_pixel_mean(path, sets.mean)
    np.testing.assert_array_equal(load_pixel_mean(path), sets.mean)
    reused = build_cifar_sets(str(tmp_path), test_split="test", mean=load_pixel_mean(path))
    np.testing.assert_allclose(reused.test[1]["image"].numpy(), test_images[1] - expected, rtol=0, atol=1e-4)
    np.save(path, np.zeros((3, 32)))
    with pytest.raises(CifarError, match=r"holds an array of shape \(3, 32\) and not a finite 3x32x32 mean image"):
        load_pixel_mean(path)


def test_overlapping_splits_are_announced(tmp_path):
    write_cifar10(tmp_path, per_file=10)
    with pytest.warns(UserWarning, match="the test split 'val' shares images with the training split 'trainval'"):
        build_cifar_sets(str(tmp_path), train_split="trainval", test_split="val")


def test_a_split_other_than_the_papers_is_announced_on_the_official_sizes(tmp_path, monkeypatch, recwarn):
    with pytest.warns(UserWarning) as caught:
        warn_if_not_the_papers_split(50000, 7500)
    assert str(caught[0].message) == ("data.val_images=7500 holds out 7,500 of the 50,000 training images, training "
                                      "on 42,500: the paper's split holds out 5,000 (data.val_images=0)")
    warn_if_not_the_papers_split(50000, None)  # a tenth: the paper's 5,000
    warn_if_not_the_papers_split(50000, 5000)
    warn_if_not_the_papers_split(10000, 7500)  # the embedded set's 10,000 images: its own split
    assert not recwarn.list
    # The datasets say it too, for the "train" split only (trainval holds nothing out).
    write_cifar10(tmp_path, per_file=10)
    monkeypatch.setitem(cifar.OFFICIAL_COUNTS, "train", 50)  # this folder's sizes are the official ones
    monkeypatch.setitem(cifar.OFFICIAL_COUNTS, "test", 3)
    monkeypatch.setattr(cifar_dataset, "PAPER_TRAINING_IMAGES", 50)
    monkeypatch.setattr(cifar_dataset, "PAPER_VAL_IMAGES", 5)
    with pytest.warns(UserWarning, match="holds out 20 of the 50 training images, training on 30"):
        build_cifar_sets(str(tmp_path), train_split="train", test_split="test", val_images=20)
    build_cifar_sets(str(tmp_path), train_split="trainval", test_split="test", val_images=20)
    build_cifar_sets(str(tmp_path), train_split="train", test_split="test")
    assert not recwarn.list


def test_a_split_of_another_size_than_the_archives_is_warned_of(tmp_path, monkeypatch, recwarn):
    """A file cut at a record boundary reads as a valid, smaller set: the count against the official
    archive's is what tells (the five CIFAR-10 training files are also compared with each other)."""
    folder, _, _ = write_cifar10(tmp_path, per_file=10, test=3)
    source = find_cifar(str(tmp_path))
    monkeypatch.setitem(cifar.OFFICIAL_COUNTS, "train", 50)
    monkeypatch.setitem(cifar.OFFICIAL_COUNTS, "test", 4)
    read_split(source, "train")
    assert not recwarn.list
    with pytest.warns(UserWarning) as caught:
        assert len(read_split(source, "test")) == 3
    assert str(caught[0].message) == (
        f"{folder}: the test files (test_batch.bin) hold 3 images, the official CIFAR-10 4: a file is cut short "
        f"or not the official one, and errors are not comparable with the paper's (download and extract the "
        f"archive again)")
    # The toolkit's generated sets have their own sizes and say so in their settings file.
    open(os.path.join(folder, cifar.SYNTHETIC_MARKER), "w").close()
    recwarn.clear()
    read_split(source, "test")
    assert not recwarn.list


def test_augmentation_against_torchvision_and_by_hand():
    images = random_images(6, 3)
    mean = images.astype(np.float32).mean(axis=0)
    dataset = CifarDataset(cifar.CifarArrays(images, np.arange(6)), mean, train=True)
    seeds = [11, 12, 13, 14, 15, 16]
    batch = dataset.batch(list(zip(range(6), seeds)))["images"]
    for k, seed in enumerate(seeds):
        top, left, flip = augmentation_draws(seed)
        reference = TF.pad(torch.from_numpy(images[k] - mean), [4], fill=0.0)  # zeros after the mean subtraction
        reference = TF.crop(reference, top, left, 32, 32)
        reference = TF.horizontal_flip(reference) if flip else reference
        torch.testing.assert_close(batch[k], reference, rtol=0, atol=0)
        torch.testing.assert_close(dataset[(k, seed)]["image"], reference, rtol=0, atol=0)
    # By hand: the crop at the padded image's corner, unflipped, is 4 rows and columns of zeros, then the
    # image's top-left 28 x 28; at (8, 8) and flipped, the bottom-right 28 x 28 mirrored, then zeros.
    draws = {augmentation_draws(seed): seed for seed in range(3000)}
    assert len(draws) == 9 * 9 * 2  # every offset, with and without the flip
    corner = dataset[(2, draws[(0, 0, False)])]["image"].numpy()
    assert not corner[:, :4].any() and not corner[:, :, :4].any()
    np.testing.assert_array_equal(corner[:, 4:, 4:], images[2, :, :28, :28] - mean[:, :28, :28])
    far = dataset[(2, draws[(8, 8, True)])]["image"].numpy()
    assert not far[:, 28:].any() and not far[:, :, :4].any()
    np.testing.assert_array_equal(far[:, :28, 4:], (images[2] - mean)[:, 4:, 4:][:, :, ::-1])


def test_loaders_resume_to_the_same_batches(tmp_path):
    write_cifar10(tmp_path, per_file=10)
    sets = build_cifar_sets(str(tmp_path))
    batches = [next(iter(build_train_loader(sets.train, 8, seed=3, num_workers=0, start_step=s, whole_batches=True)))
               for s in range(8)]
    stream = build_train_loader(sets.train, 8, seed=3, num_workers=0, whole_batches=True)
    for expected, got in zip(batches, stream):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert batches[0]["images"].shape == (8, 3, 32, 32) and batches[0]["labels"].dtype == torch.int64
    assert not torch.equal(batches[0]["images"], batches[1]["images"])
    with_workers = iter(build_train_loader(sets.train, 8, seed=3, num_workers=2, start_step=5, whole_batches=True))
    torch.testing.assert_close(next(with_workers), batches[5], rtol=0, atol=0)
    # The sampler's items, made into a batch by hand.
    sampler = GroupedBatchSampler([1.0] * 50, 8, 3, group_by_aspect=False)
    torch.testing.assert_close(sets.train.batch(next(iter(sampler))), batches[0], rtol=0, atol=0)
    test_batches = list(build_test_loader(sets.test, 2, num_workers=0, whole_batches=True))
    labels = torch.cat([b["labels"] for b in test_batches])
    assert labels.tolist() == [0, 1, 2] and [len(b["labels"]) for b in test_batches] == [2, 1]
    torch.testing.assert_close(test_batches[0]["images"][1], sets.test[1]["image"], rtol=0, atol=0)


def test_the_engine_trains_on_whole_batch_dicts(tmp_path):
    from tests.resnet_engine.toy_training import make_trainer

    write_cifar10(tmp_path, per_file=10)
    sets = build_cifar_sets(str(tmp_path))

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3072, 10)
            self.seen = []

        def forward(self, batch):
            self.seen.append(batch["labels"].clone())
            logits = self.fc(batch["images"].flatten(1) / 255)
            return {"loss_cls": torch.nn.functional.cross_entropy(logits, batch["labels"])}

    def make_loader(start):
        return build_train_loader(sets.train, 4, seed=0, num_workers=0, start_step=start, whole_batches=True)

    model = Linear()
    make_trainer(model, tmp_path / "run", make_loader=make_loader, max_iter=3, log_period=1).train()
    expected = [batch["labels"] for batch, _ in zip(make_loader(0), range(3))]
    assert len(model.seen) == 3 and all(torch.equal(a, b) for a, b in zip(model.seen, expected))


# --------------------------------------------------------------------------------------------- synthetic set


def test_the_synthetic_set(tmp_path):
    spec = SyntheticCifarSpec(train_images=50, test_images=20, seed=4)
    root = ensure_synthetic_cifar(str(tmp_path / "a"), spec)
    source = find_cifar(root)
    assert source.layout is BIN10 and read_class_names(source) == list(CLASSES)
    train, test = read_split(source, "train"), read_split(source, "test")
    assert len(train) == 50 and len(test) == 20
    sizes = [os.path.getsize(os.path.join(source.folder, name)) for name in BIN10.train_files + BIN10.test_files]
    assert sizes == [3073 * 10] * 5 + [3073 * 20]
    assert np.bincount(test.labels, minlength=10).tolist() == [2] * 10  # balanced classes
    raw = open(os.path.join(root, "cifar-10-batches-bin", "test_batch.bin"), "rb").read()
    assert raw[0] == test.labels[0] and raw[1:3073] == test.images[0].tobytes()
    assert 20 < test.images.std() < 120  # real pictures, not a constant
    # Deterministic: generated again elsewhere, byte for byte the same; kept when asked again.
    other = str(tmp_path / "b" / "cifar-10-batches-bin")
    generate_synthetic_cifar(other, spec)
    for name in BIN10.train_files + BIN10.test_files + ("batches.meta.txt",):
        assert open(os.path.join(other, name), "rb").read() == open(os.path.join(root, "cifar-10-batches-bin", name),
                                                                     "rb").read()
    assert ensure_synthetic_cifar(root, spec) == root
    with pytest.raises(CifarError) as error:
        ensure_synthetic_cifar(root, dataclasses.replace(spec, noise=5.0))
    assert str(error.value) == (f"{root}/cifar-10-batches-bin was generated with other settings (noise=20.0 instead of 5.0): "
                                f"delete it to generate it with these, or give another folder")


def stripe_direction(image: np.ndarray) -> float:
    """The stripes' direction in degrees [0, 180) (x right, y down), across the gradients of the
    structure tensor summed over the channels."""
    pixels = image.astype(np.float64)
    gx = np.stack([cv2.Sobel(c, cv2.CV_64F, 1, 0, ksize=3) for c in pixels])[:, 2:-2, 2:-2]
    gy = np.stack([cv2.Sobel(c, cv2.CV_64F, 0, 1, ksize=3) for c in pixels])[:, 2:-2, 2:-2]
    gradient = 0.5 * np.degrees(np.arctan2(2 * (gx * gy).sum(), (gx * gx).sum() - (gy * gy).sum()))
    return (gradient + 90) % 180


def test_each_synthetic_class_holds_stripes_of_its_direction():
    plain = SyntheticCifarSpec(angle_jitter=0.0, min_period=6.0, min_radius=32.0, clutter=0, noise=0.0)
    seen_signs = set()
    for class_index, angle in enumerate(CLASS_ANGLES):
        for k in range(3):
            image = render_image(np.random.default_rng([7, class_index, k]), class_index, plain)
            direction = stripe_direction(image)
            # Rising or falling: within 2 degrees of +angle or -angle.
            difference = min(abs((direction - sign * angle + 90) % 180 - 90) for sign in (1, -1))
            assert difference < 2.0, (class_index, k, direction)
            if 0 < angle < 90:
                seen_signs.add(bool(direction < 90))
    assert seen_signs == {True, False}  # rising and falling stripes both occur
