"""Readers of the ILSVRC CLS-LOC ground truth: synset lists, devkit XML annotations, Kaggle solution CSVs, the
devkit's blacklist.

Every reader returns boxes exactly as the files hold them: inclusive pixel coordinates
(xmin, ymin, xmax, ymax), where xmax is the last column the object covers. The metric adds the +1 itself.
Problems in the files raise ``UserError`` with one line naming the file, the line and the fix.
The XML folders and the solution CSVs are parsed once and then read from the annotation cache
(resnet_engine.file_cache) until their files change.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from resnet_engine.errors import UserError
from resnet_engine.file_cache import cached, file_fingerprint, tree_fingerprint

Box = tuple[float, float, float, float]
# image id (file stem) -> [(wnid, box), ...]; for predictions the list is ranked, best first.
Annotations = dict[str, list[tuple[str, Box]]]

KAGGLE_HEADER = ["ImageId", "PredictionString"]


@dataclass(frozen=True)
class Synsets:
    """The classes in order: label ``i`` (1-based, the devkit's ILSVRC2015_CLSLOC_ID) is ``wnids[i-1]``."""

    wnids: tuple[str, ...]
    names: tuple[str, ...]
    source: str = ""
    # Whether the list numbered its classes itself (the devkit's map_clsloc.txt) rather than by line order.
    numbered: bool = field(default=False, compare=False)
    _label_of: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_label_of", {wnid: i + 1 for i, wnid in enumerate(self.wnids)})

    def __len__(self) -> int:
        return len(self.wnids)

    def __contains__(self, wnid: object) -> bool:
        return wnid in self._label_of

    def label(self, wnid: str) -> int:
        return self._label_of[wnid]

    def wnid(self, label: int) -> str:
        return self.wnids[label - 1]


def read_synsets(path: str) -> Synsets:
    """Read LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca") or a devkit list ("n02119789 1 kit_fox").

    A devkit list (every line's second token an integer) is ordered by that id, which must run 1..N;
    any other list is taken in line order. Either way label = 1-based position.
    """
    rows = [(number, line.split(maxsplit=1)) for number, line in numbered_lines(path) if line.strip()]
    if not rows:
        raise UserError(f"{path}: no synsets; give LOC_synset_mapping.txt or the devkit's map_clsloc.txt")
    devkit = all(len(parts) == 2 and parts[1].split()[0].isdigit() for _, parts in rows)
    entries: list[tuple[int, str, str]] = []  # (label, wnid, name)
    for position, (_, parts) in enumerate(rows, start=1):
        rest = parts[1].strip() if len(parts) == 2 else ""
        if devkit:
            label_text, *name = rest.split(maxsplit=1)
            entries.append((int(label_text), parts[0], name[0].strip() if name else ""))
        else:
            entries.append((position, parts[0], rest))
    _check_synsets(path, rows, entries)
    entries.sort()
    return Synsets(tuple(e[1] for e in entries), tuple(e[2] for e in entries), source=path, numbered=devkit)


def _check_synsets(path: str, rows: list, entries: list[tuple[int, str, str]]) -> None:
    seen: dict[str, int] = {}
    for (number, _), (_, wnid, _) in zip(rows, entries):
        if wnid in seen:
            raise UserError(f"{path} line {number}: WNID {wnid} already on line {seen[wnid]}; "
                            "list each class once")
        seen[wnid] = number
    labels = sorted(e[0] for e in entries)
    if labels != list(range(1, len(entries) + 1)):
        raise UserError(f"{path}: the class ids of a devkit synset list must run 1..{len(entries)} once each")


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a text file; a missing file, or one that is not UTF-8 text, is a
    UserError."""
    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    with open(path, encoding="utf-8-sig") as handle:
        try:
            yield from enumerate(handle, start=1)
        except UnicodeDecodeError as error:
            raise not_utf8(path, error) from None


def not_utf8(path: str, error: UnicodeDecodeError) -> UserError:
    return UserError(f"{path}: not UTF-8 text (a byte {error.object[error.start:error.start + 1]!r} cannot be "
                     f"decoded): save it as UTF-8, or download it again")


def parse_number(path: str, line: int, token: str, what: str) -> float:
    """A finite number, or a UserError that names the file, the line and the token."""
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{path} line {line}: {what} '{token}' is not a number; "
                        "boxes are 'xmin ymin xmax ymax'")
    return value


def _check_gt_box(path: str, line: int, box: Box) -> None:
    # An inverted ground-truth box would give a negative area and a meaningless IoU.
    if box[2] < box[0] or box[3] < box[1]:
        raise UserError(f"{path} line {line}: box {' '.join(f'{v:g}' for v in box)} has xmax < xmin or "
                        "ymax < ymin; boxes are 'xmin ymin xmax ymax'")


def _check_wnid(path: str, line: int, wnid: str, synsets: Synsets | None) -> None:
    if synsets is not None and wnid not in synsets:
        source = synsets.source or "the synset list"
        raise UserError(f"{path} line {line}: unknown WNID '{wnid}' (not in {source}); "
                        "use the WNIDs of the synset list")


# ----------------------------------------------------------------------------------------------- Kaggle CSV


def is_kaggle_csv(path: str) -> bool:
    """Whether the file starts with the Kaggle header line "ImageId,PredictionString"."""
    for _, line in numbered_lines(path):
        if line.strip():
            return line.strip().replace(" ", "") == ",".join(KAGGLE_HEADER)
    return False


def read_kaggle_rows(path: str, synsets: Synsets | None = None,
                     is_ground_truth: bool = False) -> Annotations:
    """Rows "ImageId,wnid xmin ymin xmax ymax [wnid xmin ...]" in file order of the groups."""
    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    try:
        return _read_kaggle_file(path, synsets, is_ground_truth)
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from None


def _read_kaggle_file(path: str, synsets: Synsets | None, is_ground_truth: bool) -> Annotations:
    result: Annotations = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != KAGGLE_HEADER:
            raise UserError(f"{path} line 1: expected the header 'ImageId,PredictionString', "
                            f"found '{','.join(header or [])}'")
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            image_id, groups = _parse_kaggle_row(path, line, row, synsets, is_ground_truth)
            if image_id in first_line:
                raise UserError(f"{path} line {line}: ImageId {image_id} already on line "
                                f"{first_line[image_id]}; give one row per image")
            first_line[image_id] = line
            result[image_id] = groups
    return result


def _parse_kaggle_row(path: str, line: int, row: list[str], synsets: Synsets | None,
                      is_ground_truth: bool) -> tuple[str, list[tuple[str, Box]]]:
    if len(row) != 2:
        raise UserError(f"{path} line {line}: expected 2 fields 'ImageId,PredictionString', found {len(row)}")
    image_id, tokens = row[0].strip(), row[1].split()
    if not image_id:
        raise UserError(f"{path} line {line}: empty ImageId")
    if len(tokens) % 5:
        raise UserError(f"{path} line {line}: PredictionString has {len(tokens)} tokens; it must be groups "
                        "of 5 'wnid xmin ymin xmax ymax'")
    groups = []
    for start in range(0, len(tokens), 5):
        wnid = tokens[start]
        _check_wnid(path, line, wnid, synsets)
        box = tuple(parse_number(path, line, t, "coordinate") for t in tokens[start + 1:start + 5])
        if is_ground_truth:
            _check_gt_box(path, line, box)
        groups.append((wnid, box))
    return image_id, groups


def read_kaggle_solution(csv_path: str, synsets: Synsets | None = None) -> Annotations:
    """LOC_{train,val}_solution.csv -> {ImageId: [(wnid, box), ...]}, one entry per GT box (cached)."""
    if not os.path.isfile(csv_path):
        raise UserError(f"file not found: {csv_path}")
    return cached("kaggle-solution", csv_path,
                  fingerprint=lambda: file_fingerprint(csv_path, synsets_key(synsets)),
                  build=lambda: read_kaggle_rows(csv_path, synsets, is_ground_truth=True),
                  encode=encode_annotations, decode=decode_annotations)


# ----------------------------------------------------------------------------------------------- cache form


def synsets_key(synsets: Synsets | None) -> str:
    """The part of a cache key that the synset list decides: a parse checked against one list of WNIDs
    (and labelled in its order) is not reused with another."""
    return "" if synsets is None else " ".join(synsets.wnids)


def encode_annotations(annotations: Annotations) -> dict[str, Any]:
    """Annotations as four flat columns: the image ids, each image's object count, the WNIDs and the boxes'
    coordinates. Flat lists load about four times faster than one small list per object (the per-object
    form made reading a cached CSV slower than parsing the CSV again; docs/BENCHMARKS.md)."""
    ids, counts, wnids, coordinates = [], [], [], []
    for image_id, objects in annotations.items():
        ids.append(image_id)
        counts.append(len(objects))
        for wnid, box in objects:
            wnids.append(wnid)
            coordinates.extend(box)
    return {"ids": ids, "counts": counts, "wnids": wnids, "boxes": coordinates}


def decode_annotations(payload: dict[str, Any]) -> Annotations:
    """The inverse of :func:`encode_annotations`; columns that do not fit together are a ValueError (a
    damaged cache), never shifted boxes."""
    ids, counts, wnids, coordinates = (payload[key] for key in ("ids", "counts", "wnids", "boxes"))
    if not (len(ids) == len(counts) and sum(counts) == len(wnids) and len(coordinates) == 4 * len(wnids)
            and all(isinstance(wnid, str) for wnid in wnids) and min(counts, default=0) >= 0):
        raise ValueError(f"columns of {len(ids)} images, {sum(counts)} objects, {len(wnids)} WNIDs and "
                         f"{len(coordinates)} coordinates do not fit together")
    values = iter(coordinates)
    objects = [(wnid, (float(x1), float(y1), float(x2), float(y2)))
               for wnid, x1, y1, x2, y2 in zip(wnids, values, values, values, values)]
    annotations: Annotations = {}
    start = 0
    for image_id, count in zip(ids, counts):
        annotations[image_id] = objects[start:start + count]
        start += count
    return annotations


# ----------------------------------------------------------------------------------------------- devkit XML


@dataclass
class XmlAnnotation:
    """One PASCAL-VOC style ILSVRC annotation file. ``width``/``height`` are None when <size> is absent."""

    filename: str
    width: int | None
    height: int | None
    objects: list[tuple[str, Box]]


@dataclass
class _Element:
    tag: str
    line: int
    text: str = ""
    children: list[_Element] = field(default_factory=list)

    def find(self, tag: str) -> _Element | None:
        return next((child for child in self.children if child.tag == tag), None)


def _parse_xml(path: str) -> _Element:
    """A small element tree that keeps the line of every element, for errors that say where."""
    parser = expat.ParserCreate()
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(tag: str, _attributes: dict) -> None:
        element = _Element(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _tag: stack.pop()
    parser.CharacterDataHandler = text
    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    with open(path, "rb") as handle:
        try:
            parser.ParseFile(handle)
        except expat.ExpatError as error:
            raise UserError(f"{path} line {error.lineno}: malformed XML ({expat.ErrorString(error.code)}); "
                            "fix or regenerate the annotation file") from None
    return roots[0]


def _child(path: str, parent: _Element, tag: str) -> _Element:
    child = parent.find(tag)
    if child is None or not (child.text.strip() or child.children):
        raise UserError(f"{path} line {parent.line}: <{parent.tag}> has no <{tag}>; "
                        "an ILSVRC annotation needs it")
    return child


def _child_number(path: str, parent: _Element, tag: str) -> float:
    child = _child(path, parent, tag)
    return parse_number(path, child.line, child.text.strip(), tag)


def _xml_size(path: str, root: _Element) -> tuple[int | None, int | None]:
    size = root.find("size")
    if size is None:
        return None, None
    return int(_child_number(path, size, "width")), int(_child_number(path, size, "height"))


def _xml_object(path: str, obj: _Element, synsets: Synsets | None) -> tuple[str, Box]:
    name = _child(path, obj, "name")
    wnid = name.text.strip()
    _check_wnid(path, name.line, wnid, synsets)
    bndbox = _child(path, obj, "bndbox")
    box = tuple(_child_number(path, bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
    _check_gt_box(path, bndbox.line, box)
    return wnid, box


def read_xml_annotation(path: str, synsets: Synsets | None = None) -> XmlAnnotation:
    """One devkit XML file; boxes as written (no offset), as the devkit's VOCreadrecxml reads them."""
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise UserError(f"{path} line {root.line}: the root element is <{root.tag}>, expected <annotation>")
    filename_element = root.find("filename")
    filename = filename_element.text.strip() if filename_element is not None else ""
    width, height = _xml_size(path, root)
    objects = [_xml_object(path, obj, synsets) for obj in root.children if obj.tag == "object"]
    return XmlAnnotation(filename or os.path.splitext(os.path.basename(path))[0], width, height, objects)


def read_xml_dir(directory: str, synsets: Synsets | None = None) -> Annotations:
    """All ``*.xml`` under ``directory`` (the train tree has a folder per WNID) -> {file stem: objects},
    parsed once and then read from the annotation cache until a file is changed, added or removed."""
    if not os.path.isdir(directory):
        raise UserError(f"annotation folder not found: {directory}")
    return cached("xml-dir", directory,
                  fingerprint=lambda: tree_fingerprint(directory, ".xml", synsets_key(synsets)),
                  build=lambda: parse_xml_dir(directory, synsets),
                  encode=encode_annotations, decode=decode_annotations)


def parse_xml_dir(directory: str, synsets: Synsets | None = None) -> Annotations:
    """:func:`read_xml_dir` without the cache: every file parsed now."""
    result: Annotations = {}
    where: dict[str, str] = {}
    for folder, subfolders, files in os.walk(directory):
        subfolders.sort()
        for name in sorted(files):
            if not name.lower().endswith(".xml"):
                continue
            path = os.path.join(folder, name)
            stem = os.path.splitext(name)[0]
            if stem in where:
                raise UserError(f"{path}: image id {stem} also annotated by {where[stem]}; "
                                "keep one file per image")
            where[stem] = path
            result[stem] = read_xml_annotation(path, synsets).objects
    if not result:
        raise UserError(f"no .xml annotations under {directory}; give ILSVRC/Annotations/CLS-LOC/val")
    return result


# ----------------------------------------------------------------------------------------------- either form


def load_ground_truth(path: str, synsets: Synsets | None = None) -> Annotations:
    """A folder of devkit XMLs (ILSVRC/Annotations/CLS-LOC/val) or a Kaggle LOC_val_solution.csv."""
    if os.path.isdir(path):
        return read_xml_dir(path, synsets)
    if not os.path.isfile(path):
        raise UserError(f"ground truth not found: {path} (give LOC_val_solution.csv or the folder of the "
                        "val XMLs)")
    return read_kaggle_solution(path, synsets)


VAL_IMAGE_NAME = "ILSVRC2012_val_{:08d}"
VAL_IMAGES = 50_000


def read_blacklist(path: str, image_ids: list[str]) -> set[str]:
    """The devkit blacklist, of the ground-truth images ``image_ids``: one image per line, as its number
    among the 50,000 val images (the devkit's ILSVRC2015_clsloc_validation_blacklist.txt: line n names
    ILSVRC2012_val_<n as 8 digits>) or as the image name itself. Listed val images that are not scored here
    (a subset of the val images, as test.max_images scores) leave nothing out, by number or by name."""
    known = set(image_ids)
    val_names = any(image_id.startswith("ILSVRC2012_val_") for image_id in known)
    blacklist = set()
    for number, line in numbered_lines(path):
        entry = line.strip()
        if not entry:
            continue
        name = entry if entry in known else _val_image_name(path, number, entry, val_names)
        if name in known:
            blacklist.add(name)
    return blacklist


def _val_image_name(path: str, line: int, entry: str, val_names: bool) -> str:
    """The val image a blacklist entry names by its number or by its name ILSVRC2012_val_<8 digits>, whether
    or not it is scored here; a UserError for anything else."""
    digits = entry.removeprefix("ILSVRC2012_val_")
    well_formed = digits.isdigit() and (digits == entry or len(digits) == 8)
    if entry.isdigit() and not val_names:
        raise UserError(f"{path} line {line}: numbers name the val images ILSVRC2012_val_<8 digits>, and none "
                        "of the ground truth's images is named so: list the images by name")
    if not (well_formed and val_names):
        raise UserError(f"{path} line {line}: '{entry}' is neither an image number nor a ground-truth image name")
    if not 1 <= int(digits) <= VAL_IMAGES:
        raise UserError(f"{path} line {line}: image number {entry} is outside 1..{VAL_IMAGES} (numbers name the "
                        "val images ILSVRC2012_val_00000001 to ILSVRC2012_val_00050000)")
    return VAL_IMAGE_NAME.format(int(digits))
