"""The annotation cache of the CLS-LOC readers: a cached read equals the files as written, and any change
to the files (or a damaged cache file) gives a fresh parse, never stale boxes."""

import json
import os
import warnings

import pytest

from classification.data import ilsvrc
from classification.data.ilsvrc import Synsets, read_kaggle_solution, read_xml_dir
from resnet_engine.file_cache import FORMAT_VERSION, cache_path

from .test_formats import xml_text

GT = {
    "ILSVRC2012_val_00000001": [("n01", (10.0, 10.0, 59.0, 59.0))],
    "ILSVRC2012_val_00000002": [("n02", (0.0, 0.0, 9.0, 9.0)), ("n02", (100.0, 100.0, 139.5, 139.0))],
}


def write_tree(folder, annotations):
    folder.mkdir(exist_ok=True)
    for stem, objects in annotations.items():
        (folder / f"{stem}.xml").write_text(xml_text(stem, objects))


@pytest.fixture
def parses(monkeypatch):
    """How many times each reader parsed its files rather than reading the cache."""
    counts = {"xml": 0, "csv": 0}
    parse_xml_dir, read_kaggle_rows = ilsvrc.parse_xml_dir, ilsvrc.read_kaggle_rows

    def counting_xml(*args, **kwargs):
        counts["xml"] += 1
        return parse_xml_dir(*args, **kwargs)

    def counting_csv(*args, **kwargs):
        counts["csv"] += 1
        return read_kaggle_rows(*args, **kwargs)

    monkeypatch.setattr(ilsvrc, "parse_xml_dir", counting_xml)
    monkeypatch.setattr(ilsvrc, "read_kaggle_rows", counting_csv)
    return counts


def test_a_cached_read_gives_the_boxes_as_written(tmp_path, parses):
    write_tree(tmp_path / "val", GT)
    first = read_xml_dir(str(tmp_path / "val"))
    second = read_xml_dir(str(tmp_path / "val"))
    assert first == GT and second == GT
    assert parses["xml"] == 1
    stored = json.loads(open(cache_path("xml-dir", str(tmp_path / "val")), encoding="utf-8").read())
    payload = stored["payload"]  # flat columns: the second object of the second image is the third object
    assert payload["ids"][1] == "ILSVRC2012_val_00000002" and payload["counts"][:2] == [1, 2]
    assert payload["wnids"][2] == "n02" and payload["boxes"][8:12] == [100.0, 100.0, 139.5, 139.0]


def test_a_changed_added_or_removed_file_rebuilds_the_cache(tmp_path, parses):
    folder = tmp_path / "val"
    write_tree(folder, GT)
    assert read_xml_dir(str(folder)) == GT
    changed = {**GT, "ILSVRC2012_val_00000001": [("n01", (11.0, 12.0, 50.0, 51.0))]}
    write_tree(folder, changed)
    assert read_xml_dir(str(folder)) == changed
    added = {**changed, "ILSVRC2012_val_00000003": [("n03", (1.0, 2.0, 3.0, 4.0))]}
    write_tree(folder, added)
    assert read_xml_dir(str(folder)) == added
    os.remove(folder / "ILSVRC2012_val_00000002.xml")
    assert read_xml_dir(str(folder)) == {k: v for k, v in added.items() if k != "ILSVRC2012_val_00000002"}
    assert parses["xml"] == 4


def test_an_edit_that_keeps_the_size_is_seen_through_the_modification_time(tmp_path, parses):
    folder = tmp_path / "val"
    write_tree(folder, GT)
    read_xml_dir(str(folder))
    path = folder / "ILSVRC2012_val_00000001.xml"
    before = os.stat(path)
    path.write_text(path.read_text().replace("<xmin>10.0</xmin>", "<xmin>20.0</xmin>"))
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert read_xml_dir(str(folder))["ILSVRC2012_val_00000001"] == [("n01", (20.0, 10.0, 59.0, 59.0))]
    assert parses["xml"] == 2


DAMAGED_PAYLOADS = [  # with the right fingerprint: columns that do not fit together
    '{"ids": ["a"], "counts": [1], "wnids": ["n01"], "boxes": [1, 2]}',
    '{"ids": ["a", "b"], "counts": [1], "wnids": ["n01"], "boxes": [1, 2, 3, 4]}',
    '{"ids": ["a"], "counts": [1], "wnids": [7], "boxes": [1, 2, 3, 4]}',
    '{"ids": ["a"], "counts": [1], "wnids": ["n01"]}']


@pytest.mark.parametrize("damage", [f'{{"version": {FORMAT_VERSION}, "fingerp', "[1, 2]"] + [
    f'{{"version": {FORMAT_VERSION}, "fingerprint": "%s", "payload": {payload}}}' for payload in DAMAGED_PAYLOADS])
def test_a_damaged_cache_is_rebuilt_with_one_warning(tmp_path, parses, damage):
    folder = tmp_path / "val"
    write_tree(folder, GT)
    read_xml_dir(str(folder))
    path = cache_path("xml-dir", str(folder))
    if "%s" in damage:  # the right fingerprint over a damaged payload
        damage = damage % json.loads(open(path, encoding="utf-8").read())["fingerprint"]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(damage)
    with pytest.warns(UserWarning, match="unreadable annotation cache") as caught:
        assert read_xml_dir(str(folder)) == GT
    assert len(caught) == 1 and str(path) in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache reads cleanly
        assert read_xml_dir(str(folder)) == GT
    assert parses["xml"] == 2


def test_another_synset_list_is_checked_again(tmp_path, parses):
    folder = tmp_path / "val"
    write_tree(folder, GT)
    assert read_xml_dir(str(folder), Synsets(("n01", "n02"), ("a", "b"))) == GT
    with pytest.raises(ilsvrc.UserError, match="unknown WNID 'n02'"):
        read_xml_dir(str(folder), Synsets(("n01",), ("a",)))
    assert parses["xml"] == 2


def test_the_solution_csv_is_cached_and_rebuilt_when_it_changes(tmp_path, parses):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text("ImageId,PredictionString\nb,n02 0 0 9 9 n02 1 2 3 4.5\na,n01 10 10 59 59\n")
    expected = {"b": [("n02", (0.0, 0.0, 9.0, 9.0)), ("n02", (1.0, 2.0, 3.0, 4.5))],
                "a": [("n01", (10.0, 10.0, 59.0, 59.0))]}
    assert read_kaggle_solution(str(path)) == expected
    assert list(read_kaggle_solution(str(path))) == ["b", "a"]  # file order survives the cache
    assert parses["csv"] == 1
    path.write_text("ImageId,PredictionString\na,n01 1 1 5 5\n")
    assert read_kaggle_solution(str(path)) == {"a": [("n01", (1.0, 1.0, 5.0, 5.0))]}
    assert parses["csv"] == 2


def test_turned_off_the_cache_writes_nothing(tmp_path, parses, monkeypatch):
    monkeypatch.setenv("RESNET_DETECTION_ANNOTATION_CACHE", "off")
    write_tree(tmp_path / "val", GT)
    assert read_xml_dir(str(tmp_path / "val")) == GT
    assert read_xml_dir(str(tmp_path / "val")) == GT
    assert parses["xml"] == 2
