"""On-disk formats (synsets, devkit XML, Kaggle CSV, devkit predictions); bad files give one-line errors."""

import json
import os
import warnings

import pytest

from classification.data.ilsvrc import read_kaggle_solution, read_synsets, read_xml_annotation, read_xml_dir
from localization.data.predictions import read_devkit_predictions, read_kaggle_predictions
from localization.evaluation.evaluator import score_files
from resnet_engine.errors import UserError

IDS = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 5)]
GT = {
    IDS[0]: [("n01", (10, 10, 59, 59))],
    IDS[1]: [("n02", (0, 0, 9, 9)), ("n02", (100, 100, 139, 139))],
    IDS[2]: [("n03", (20, 30, 69, 99))],
    IDS[3]: [("n01", (0, 0, 9, 9))],
}
# The devkit's own order is not sorted by WNID: label 1 is n03, 2 is n01, 3 is n02.
DEVKIT_SYNSETS = "n03 1 cat\nn01 2 dog\nn02 3 fish\n"
PRED_CSV = (
    "ImageId,PredictionString\n"
    f"{IDS[2]},n03 0 0 9 9" + " n01 0 0 9 9" * 4 + " n03 20 30 69 99\n"  # the right box 6th: ignored
    f"{IDS[0]},n02 10 10 59 59 n01 10 10 59 34\n"  # right at 2 with IoU exactly 0.5
    f"{IDS[3]},\n"  # no guesses
    f"{IDS[1]},n02 100 100 139 119\n"  # right at 1 on the second GT box (IoU 0.5)
)
PRED_DEVKIT = (
    "3 10 10 59 59 2 10 10 59 34\n"
    "3 100 100 139 119\n"
    "1 0 0 9 9" + " 2 0 0 9 9" * 4 + " 1 20 30 69 99\n"
    "\n"
)
# Ranks of the first right guess: LOC 2, 1, never, never; CLS 2, 1, 1, never.
EXPECTED = {"top1_loc_err": 75.0, "top5_loc_err": 50.0, "top1_cls_err": 50.0, "top5_cls_err": 25.0,
            "loc_err_by_guesses": [75.0, 50.0, 50.0, 50.0, 50.0],
            "cls_err_by_guesses": [50.0, 25.0, 25.0, 25.0, 25.0],
            "num_images": 4, "num_blacklisted": 0, "num_missing": 1}  # IDS[3] has no guess


def xml_text(stem, objects, size=(200, 150)):
    body = "".join(f"  <object>\n    <name>{wnid}</name>\n    <pose>Unspecified</pose>\n"
                   "    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
                   f"    <bndbox>\n      <xmin>{b[0]}</xmin>\n      <ymin>{b[1]}</ymin>\n"
                   f"      <xmax>{b[2]}</xmax>\n      <ymax>{b[3]}</ymax>\n    </bndbox>\n  </object>\n"
                   for wnid, b in objects)
    return (f"<annotation>\n  <folder>val</folder>\n  <filename>{stem}</filename>\n"
            f"  <size>\n    <width>{size[0]}</width>\n    <height>{size[1]}</height>\n"
            "    <depth>3</depth>\n  </size>\n"
            f"  <segmented>0</segmented>\n{body}</annotation>\n")


def write_fixture(tmp_path):
    """GT as XML folder and Kaggle CSV, the devkit synset list, the same predictions in both formats."""
    (tmp_path / "xml").mkdir()
    for stem, objects in GT.items():
        (tmp_path / "xml" / f"{stem}.xml").write_text(xml_text(stem, objects))
    rows = [f"{stem}," + " ".join(f"{w} {' '.join(map(str, b))}" for w, b in objects)
            for stem, objects in reversed(GT.items())]  # Kaggle rows are not in sorted order
    (tmp_path / "gt.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (tmp_path / "map_clsloc.txt").write_text(DEVKIT_SYNSETS)
    (tmp_path / "pred.csv").write_text(PRED_CSV)
    (tmp_path / "pred.txt").write_text(PRED_DEVKIT)
    return tmp_path


@pytest.fixture
def fixture_files(tmp_path):
    return write_fixture(tmp_path)


def test_both_ground_truth_readers_agree(fixture_files):
    synsets = read_synsets(str(fixture_files / "map_clsloc.txt"))
    from_xml = read_xml_dir(str(fixture_files / "xml"), synsets)
    from_csv = read_kaggle_solution(str(fixture_files / "gt.csv"), synsets)
    assert from_xml == from_csv == GT


def test_both_prediction_readers_agree(fixture_files):
    synsets = read_synsets(str(fixture_files / "map_clsloc.txt"))
    from_csv = read_kaggle_predictions(str(fixture_files / "pred.csv"), synsets)
    from_txt = read_devkit_predictions(str(fixture_files / "pred.txt"), synsets, sorted(GT))
    assert from_csv == from_txt
    assert from_csv[IDS[0]] == [("n02", (10, 10, 59, 59)), ("n01", (10, 10, 59, 34))]
    assert len(from_csv[IDS[2]]) == 6  # all guesses are read; the metric keeps five


@pytest.mark.parametrize("gt_name", ["gt.csv", "xml"])
@pytest.mark.parametrize("pred_name", ["pred.csv", "pred.txt"])
def test_four_format_combinations_give_the_same_metrics(fixture_files, gt_name, pred_name, capsys):
    out = fixture_files / f"out_{gt_name}_{pred_name}"
    with pytest.warns(UserWarning, match=f"1 of 4 ground-truth images have no prediction \\(e.g. {IDS[3]}\\)"):
        metrics = score_files(str(fixture_files / gt_name), str(fixture_files / pred_name),
                              str(fixture_files / "map_clsloc.txt"), str(out))
    assert metrics == EXPECTED
    assert json.loads((out / "metrics.json").read_text()) == EXPECTED
    table = capsys.readouterr().out
    assert "# guesses" in table and "        2              50.00                25.00" in table


def test_kaggle_files_need_no_synsets_and_blacklist_numbers_name_val_images(fixture_files):
    metrics = score_files(str(fixture_files / "gt.csv"), str(fixture_files / "pred.csv"), None,
                          str(fixture_files / "out"))
    assert metrics == EXPECTED
    # Number 4 is ILSVRC2012_val_00000004 (IDS[3]); 17 is a val image these four are not, which leaves
    # nothing out (counted as a position among the given images, a number beyond them would have named
    # another image or failed).
    (fixture_files / "blacklist.txt").write_text("4\n17\n")
    metrics = score_files(str(fixture_files / "gt.csv"), str(fixture_files / "pred.csv"), None,
                          str(fixture_files / "out"), blacklist=str(fixture_files / "blacklist.txt"))
    assert metrics["top1_loc_err"] == pytest.approx(200 / 3)
    assert metrics["top5_loc_err"] == pytest.approx(100 / 3)
    assert metrics["top5_cls_err"] == 25.0 and metrics["num_blacklisted"] == 1


def test_devkit_predictions_need_the_synset_list(fixture_files):
    with pytest.raises(UserError, match="pred.txt is in the devkit format.*--synsets"):
        score_files(str(fixture_files / "gt.csv"), str(fixture_files / "pred.txt"), None, str(fixture_files))


def test_an_empty_file_or_a_kaggle_csv_without_its_header_is_said_so(fixture_files, tmp_path):
    """Both were "in the devkit format (integer labels): give the synset list", a search for the wrong fix."""
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(UserError) as error:
        score_files(str(fixture_files / "gt.csv"), str(empty), None, str(tmp_path / "out"))
    assert str(error.value) == f"{empty} holds no predictions (it is empty)"
    headless = tmp_path / "headless.csv"
    rows = (fixture_files / "pred.csv").read_text().splitlines()[1:]  # the Kaggle CSV without its header
    headless.write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError) as error:
        score_files(str(fixture_files / "gt.csv"), str(headless), None, str(tmp_path / "out"))
    assert str(error.value) == (f"{headless}: its first line ({rows[0].strip()[:40]}...) is comma-separated but not "
                                "the Kaggle header: a Kaggle CSV starts with the line ImageId,PredictionString; "
                                "devkit text separates by spaces")


def test_devkit_labels_read_by_line_order_are_warned_of(fixture_files, tmp_path):
    """LOC_synset_mapping.txt lists the classes by WNID (n01 n02 n03); the devkit's labels number them as
    map_clsloc.txt does (1 is n03): read by line the same file scores other classes, which a warning says."""
    by_wnid = tmp_path / "LOC_synset_mapping.txt"
    by_wnid.write_text("n01 dog\nn02 fish\nn03 cat\n")
    with pytest.warns(UserWarning, match=r"pred.txt: its devkit labels are read as line numbers of .*"
                                         r"LOC_synset_mapping.txt, .*give --synsets map_clsloc.txt"):
        by_line = score_files(str(fixture_files / "gt.csv"), str(fixture_files / "pred.txt"), str(by_wnid),
                              str(tmp_path / "out"))
    assert by_line["top5_loc_err"] != EXPECTED["top5_loc_err"]  # the same file, other classes
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*have no prediction")
        right = score_files(str(fixture_files / "gt.csv"), str(fixture_files / "pred.txt"),
                            str(fixture_files / "map_clsloc.txt"), str(tmp_path / "out"))
    assert right == EXPECTED


def test_synset_lists(tmp_path):
    kaggle = tmp_path / "LOC_synset_mapping.txt"
    kaggle.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    synsets = read_synsets(str(kaggle))
    assert synsets.wnids == ("n01440764", "n01443537")
    assert synsets.names == ("tench, Tinca tinca", "goldfish, Carassius auratus")
    assert synsets.label("n01443537") == 2 and synsets.wnid(1) == "n01440764"
    devkit = tmp_path / "map_clsloc.txt"
    devkit.write_text("n02100735 2 English_setter\nn02119789 1 kit_fox\n")
    synsets = read_synsets(str(devkit))
    assert synsets.wnids == ("n02119789", "n02100735") and synsets.names == ("kit_fox", "English_setter")
    devkit.write_text("n02119789 1 kit_fox\nn02119789 2 kit_fox\n")
    with pytest.raises(UserError, match=r"map_clsloc.txt line 2: WNID n02119789 already on line 1"):
        read_synsets(str(devkit))
    kaggle.write_bytes("n01440764 tench\nn01443537 caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"LOC_synset_mapping.txt: not UTF-8 text \(a byte b'\\xe9' cannot be "
                                        r"decoded\): save it as UTF-8, or download it again"):
        read_synsets(str(kaggle))
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_bytes("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4 caf\xe9\n"
                         .encode("latin-1"))
    with pytest.raises(UserError, match=r"LOC_val_solution.csv: not UTF-8 text"):
        read_kaggle_solution(str(solution))


def test_xml_annotation_fields(fixture_files):
    annotation = read_xml_annotation(str(fixture_files / "xml" / f"{IDS[1]}.xml"))
    assert (annotation.filename, annotation.width, annotation.height) == (IDS[1], 200, 150)
    assert annotation.objects == GT[IDS[1]]


def one_line_error(call, *args):
    with pytest.raises(UserError) as error:
        call(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_malformed_csv_rows_name_file_and_line(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text("ImageId,PredictionString\na,n01 1 2 3 4\nb,n01 1 2 3 4 5\n")
    message = one_line_error(read_kaggle_solution, str(path))
    assert message.startswith(f"{path} line 3: PredictionString has 6 tokens")
    path.write_text("ImageId,PredictionString\na,n01 1 2 x3 4\n")
    message = one_line_error(read_kaggle_solution, str(path))
    assert message.startswith(f"{path} line 2: coordinate 'x3' is not a number")
    path.write_text("ImageId,PredictionString\na,n01 1 2 3 4,extra\n")
    assert "line 2: expected 2 fields" in one_line_error(read_kaggle_solution, str(path))
    path.write_text("image,boxes\na,n01 1 2 3 4\n")
    message = one_line_error(read_kaggle_solution, str(path))
    assert "line 1: expected the header 'ImageId,PredictionString'" in message
    path.write_text("ImageId,PredictionString\na,n01 1 2 3 4\na,n01 1 2 3 4\n")
    assert "line 3: ImageId a already on line 2" in one_line_error(read_kaggle_solution, str(path))
    path.write_text("ImageId,PredictionString\na,n01 5 2 3 4\n")
    assert "line 2: box 5 2 3 4 has xmax < xmin" in one_line_error(read_kaggle_solution, str(path))


def test_unknown_wnid_names_file_and_line(fixture_files):
    synsets = read_synsets(str(fixture_files / "map_clsloc.txt"))
    path = fixture_files / "bad.csv"
    path.write_text("ImageId,PredictionString\na,n01 1 2 3 4\nb,n77 1 2 3 4\n")
    assert one_line_error(read_kaggle_predictions, str(path), synsets).startswith(
        f"{path} line 3: unknown WNID 'n77' (not in {fixture_files / 'map_clsloc.txt'})")
    xml = fixture_files / "xml" / f"{IDS[0]}.xml"
    xml.write_text(xml_text(IDS[0], [("n01", (1, 2, 3, 4)), ("n77", (1, 2, 3, 4))]))
    assert one_line_error(read_xml_dir, str(fixture_files / "xml"), synsets).startswith(
        f"{xml} line 23: unknown WNID 'n77'")


def test_malformed_xml_names_file_and_line(tmp_path):
    path = tmp_path / "ILSVRC2012_val_00000001.xml"
    path.write_text("<annotation>\n  <object>\n    <name>n01</name>\n  </annotation>\n")
    message = one_line_error(read_xml_annotation, str(path))
    assert message.startswith(f"{path} line 4: malformed XML (mismatched tag)")
    text = xml_text("x", [("n01", (1, 2, 3, 4))]).replace("      <xmin>1</xmin>\n", "")
    path.write_text(text)
    message = one_line_error(read_xml_annotation, str(path))
    assert message.startswith(f"{path} line 15: <bndbox> has no <xmin>")
    path.write_text(xml_text("x", [("n01", (1, 2, 3, 4))]).replace("<ymin>2</ymin>", "<ymin>two</ymin>"))
    message = one_line_error(read_xml_annotation, str(path))
    assert message.startswith(f"{path} line 17: ymin 'two' is not a number")
    path.write_text(xml_text("x", [("n01", (1, 2, 3, 4))]).replace("bndbox>", "box>"))
    assert "line 10: <object> has no <bndbox>" in one_line_error(read_xml_annotation, str(path))


def test_malformed_devkit_predictions_name_file_and_line(fixture_files):
    synsets = read_synsets(str(fixture_files / "map_clsloc.txt"))
    path = fixture_files / "bad.txt"
    path.write_text("1 0 0 9 9\n4 0 0 9 9\n\n\n")
    assert one_line_error(read_devkit_predictions, str(path), synsets, IDS).startswith(
        f"{path} line 2: label '4' is not a class id 1..3")
    path.write_text("1 0 0 9 9\n1 0 0 9\n\n\n")
    assert "line 2: 4 numbers" in one_line_error(read_devkit_predictions, str(path), synsets, IDS)
    path.write_text("1 0 0 9 9\n")
    message = one_line_error(read_devkit_predictions, str(path), synsets, IDS)
    assert "1 lines for 4 ground-truth images" in message
    # Label 0 is an empty slot (dlmread's padding): it keeps its rank and is never right.
    path.write_text("0 0 0 0 0 2 10 10 59 59\n\n\n\n")
    guesses = read_devkit_predictions(str(path), synsets, IDS)[IDS[0]]
    assert guesses == [("", (0, 0, 0, 0)), ("n01", (10, 10, 59, 59))]


def test_devkit_file_one_line_short_counts_the_last_image_without_prediction(fixture_files, capsys):
    """Three lines and a newline for four images read as an empty fourth line: the report must say so."""
    path = fixture_files / "short.txt"
    path.write_text("2 10 10 59 59\n3 100 100 139 119\n1 20 30 69 99\n")
    with pytest.warns(UserWarning, match=f"1 of 4 ground-truth images have no prediction \\(e.g. {IDS[3]}\\); "
                                         "they count as wrong"):
        metrics = score_files(str(fixture_files / "xml"), str(path), str(fixture_files / "map_clsloc.txt"),
                              str(fixture_files / "out"))
    assert metrics["num_missing"] == 1 and metrics["top1_loc_err"] == 25.0
    assert "images: 4 (0 blacklisted for LOC, 1 without prediction)" in capsys.readouterr().out


def test_missing_ground_truth_is_a_user_error(tmp_path):
    message = one_line_error(score_files, str(tmp_path / "nope.csv"), str(tmp_path / "p.csv"), None,
                             str(tmp_path))
    assert "ground truth not found" in message and "nope.csv" in message
    assert not os.path.exists(tmp_path / "metrics.json")


def test_blacklist_numbers_name_the_val_images_whatever_the_subset_scored(tmp_path):
    """Of the devkit's numbering, on the val images 3, 7 and 9: number 7 is ILSVRC2012_val_00000007, not
    the second of the three."""
    from classification.data.ilsvrc import read_blacklist
    subset = [f"ILSVRC2012_val_{i:08d}" for i in (9, 3, 7)]
    (tmp_path / "blacklist.txt").write_text("2\n7\n50000\n")
    assert read_blacklist(str(tmp_path / "blacklist.txt"), subset) == {"ILSVRC2012_val_00000007"}
    (tmp_path / "beyond.txt").write_text("50001\n")
    with pytest.raises(UserError, match=r"beyond.txt line 1: image number 50001 is outside 1..50000"):
        read_blacklist(str(tmp_path / "beyond.txt"), subset)
    with pytest.raises(UserError, match=r"blacklist.txt line 1: numbers name the val images ILSVRC2012_val_<8 "
                                        r"digits>, and none of the ground truth's images is named so"):
        read_blacklist(str(tmp_path / "blacklist.txt"), ["photo_a", "photo_b"])


def test_blacklist_names_of_val_images_outside_the_scored_subset_leave_nothing_out(tmp_path):
    """As numbers do: a test.max_images subset is scored against the devkit's whole list, by name too."""
    from classification.data.ilsvrc import read_blacklist
    subset = [f"ILSVRC2012_val_{i:08d}" for i in (9, 3, 7)]
    names = tmp_path / "names.txt"
    names.write_text("ILSVRC2012_val_00000003\nILSVRC2012_val_00000004\n\nILSVRC2012_val_00049999\n8\n")
    assert read_blacklist(str(names), subset) == {"ILSVRC2012_val_00000003"}
    for entry in ("ILSVRC2012_val_123", "photo_a", "ILSVRC2012_test_00000001"):
        names.write_text(f"3\n{entry}\n")
        with pytest.raises(UserError, match=rf"^{names} line 2: '{entry}' is neither an image number nor a "
                                            r"ground-truth image name$"):
            read_blacklist(str(names), subset)
    names.write_text("ILSVRC2012_val_00050001\n")
    with pytest.raises(UserError, match=r"names.txt line 1: image number ILSVRC2012_val_00050001 is outside "):
        read_blacklist(str(names), subset)
    names.write_text("photo_b\nILSVRC2012_val_00000003\n")
    with pytest.raises(UserError, match=r"line 2: 'ILSVRC2012_val_00000003' is neither an image number"):
        read_blacklist(str(names), ["photo_a", "photo_b"])


def test_predictions_of_another_split_and_inverted_boxes(fixture_files, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("ImageId,PredictionString\nILSVRC2012_test_00000001,n01 0 0 9 9\n")
    with pytest.raises(UserError, match=r"other.csv: none of its 1 images is in the ground truth \(e.g. "
                                        r"ILSVRC2012_test_00000001, where the ground truth has ILSVRC2012_val_"):
        score_files(str(fixture_files / "gt.csv"), str(other), None, str(tmp_path / "out"))
    widths = tmp_path / "widths.csv"  # x y width height given where corners are expected
    widths.write_text("ImageId,PredictionString\n" + "".join(f"{image_id},n01 40 40 10 10\n" for image_id in IDS))
    with pytest.warns(UserWarning, match=r"widths.csv: 4 guessed boxes have xmax < xmin or ymax < ymin and can never "
                                         r"be right"):
        metrics = score_files(str(fixture_files / "gt.csv"), str(widths), None, str(tmp_path / "out"))
    assert metrics["top5_loc_err"] == 100.0


def test_kaggle_labels_that_are_not_wnids_are_an_error_not_a_100_percent_error(fixture_files, tmp_path):
    """Class numbers in a Kaggle CSV were dropped as labels of no GT image: every error printed 100.00."""
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("ImageId,PredictionString\n" + "".join(f"{image_id},2 10 10 59 59 1 0 0 9 9\n"
                                                              for image_id in IDS))
    message = one_line_error(score_files, str(fixture_files / "gt.csv"), str(numbers), None, str(tmp_path / "out"))
    assert message == (f"{numbers}: labels such as '2' are not WNIDs (the ground truth's are such as n01), so every "
                       f"guess would count wrong: a Kaggle CSV labels its guesses by WNID; class numbers are read "
                       f"from devkit text with --synsets map_clsloc.txt")
    assert not os.path.exists(tmp_path / "out" / "metrics.json")
    mixed = tmp_path / "mixed.csv"  # IDS[0] right at rank 1; the other three labelled by number
    mixed.write_text("ImageId,PredictionString\n" f"{IDS[0]},n01 10 10 59 59\n"
                     + "".join(f"{image_id},3 0 0 9 9\n" for image_id in IDS[1:]))
    with pytest.warns(UserWarning, match=r"mixed.csv: 3 of 4 guesses can never be right: labels such as '3' are "
                                         r"not WNIDs"):
        metrics = score_files(str(fixture_files / "gt.csv"), str(mixed), None, str(tmp_path / "out"))
    assert metrics["top1_loc_err"] == 75.0 and metrics["top5_cls_err"] == 75.0
    wrong = tmp_path / "wrong.csv"  # WNIDs of classes the ground truth lacks: plainly wrong guesses, no error
    wrong.write_text("ImageId,PredictionString\n" + "".join(f"{image_id},n77 0 0 9 9\n" for image_id in IDS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert score_files(str(fixture_files / "gt.csv"), str(wrong), None, str(tmp_path / "out"))["top5_cls_err"] == 100
