"""``sepico check-data``: whether a dataset folder holds what the published dataset holds.

For each split (ACDC: each split of each condition) one table reports

- the images and the labels found, against the published counts (``PUBLISHED``, each with where
  it is published);
- the images without their label, the image-label pairs whose sizes differ, the label files
  holding ids outside the dataset's id scheme, and the files that cannot be decoded, among the
  files read;
- for the day-night method's targets (Dark Zurich, ACDC; their ``train`` split) the images
  without their daytime image (Dark Zurich's correspondence files, ACDC's reference images).

Listing and counting look at every file name; decoding reads a sample (``SAMPLE`` evenly spaced
image-label pairs per split, the first and the last among them) or, with ``deep``, every file. The
report says which. Nothing is written anywhere, least of all into the dataset folder.

Published counts and where they come from (what this project could read of each source is said
beside it; a count not read here is the source's figure as cited, unverified):

- GTA5 (Richter et al., ECCV 2016, "Playing for Data"): 24,966 frames, each with its label. The
  paper was not read here; papers that restate it agree (24,966 GTA5 images with Cityscapes-
  compatible labels).
- SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016; the subset's page): 9,400 images with labels.
  Not read here; restated with that figure by the same papers.
- Cityscapes (Cordts et al., CVPR 2016): fine annotations for 2,975 train, 500 val and 1,525 test
  images (test labels withheld). 2,975 / 500 restated by the papers above; 1,525 not read here.
- Dark Zurich (Sakaridis et al., ICCV 2019, "Guided Curriculum Model Adaptation and
  Uncertainty-Aware Evaluation"): 2,416 nighttime training images (unlabelled; the training
  archive also holds 2,920 twilight and 3,041 daytime images: the day-night method reads daytime
  ones through the correspondence files, nothing here reads the twilight ones), 50 labelled val
  and 151 test images (test labels withheld). Not read here.
- ACDC (Sakaridis et al., ICCV 2021; arXiv 2104.13395v4): 4,006 adverse-condition images, equally
  distributed between fog, night, rain and snow (the abstract, read here); per condition 400
  train, 100 val (night: 106) and 500 test images (test labels withheld): the paper's split, not
  read here; it adds up to 1,600 / 406 / 2,000 = 4,006.
- Nighttime Driving (Dai and Van Gool, ITSC 2018): 50 test images with coarse labels. Not read here.
- BDD100k-night: 87 night images of BDD100K's 10K segmentation set, 74 from its train and 13 from
  its val folder (brdav/refign data_modules/datasets/lists/images_trainval_night_correct_filenames.txt,
  read here: 87 lines). That SePiCo's figure (40.6 mIoU) was measured on this list is not stated
  by the official code and was not verified; the layout here reads the 87 from one folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sepico.data.night import CorrespondenceError, daytime_images
from sepico.data.real import ACDC_CONDITIONS, REAL_DATASETS, SIZE_MISMATCH_TOLERATED, SegmentationFolder, read_rgb
from sepico.errors import ConfigError, DatasetError

SAMPLE = 32  # image-label pairs decoded per split without --deep
QUICK_SAMPLE = 2  # ... by the check at the start of train and eval
SPLITS = {"gta5": ("train",), "synthia": ("train",), "cityscapes": ("train", "val", "test"),
          "dark_zurich": ("train", "val", "test"), "acdc": ("train", "val", "test"),
          "nighttime_driving": ("test",), "bdd100k_night": ("test",)}
DAY_NIGHT_SPLIT = "train"  # the split whose images the day-night method pairs with daytime images


class Published(NamedTuple):
    images: int
    labels: int | None  # None: no labels are published for the split
    source: str


_GTA5 = "Richter et al., ECCV 2016"
_SYNTHIA = "Ros et al., CVPR 2016 (SYNTHIA-RAND-CITYSCAPES)"
_CITYSCAPES = "Cordts et al., CVPR 2016"
_DARK_ZURICH = "Sakaridis et al., ICCV 2019"
_ACDC = "Sakaridis et al., ICCV 2021 (per-condition split)"
PUBLISHED: dict[tuple[str, str, str | None], Published] = {
    ("gta5", "train", None): Published(24_966, 24_966, _GTA5),
    ("synthia", "train", None): Published(9_400, 9_400, _SYNTHIA),
    ("cityscapes", "train", None): Published(2_975, 2_975, _CITYSCAPES),
    ("cityscapes", "val", None): Published(500, 500, _CITYSCAPES),
    ("cityscapes", "test", None): Published(1_525, None, _CITYSCAPES),
    ("dark_zurich", "train", None): Published(2_416, None, _DARK_ZURICH),
    ("dark_zurich", "val", None): Published(50, 50, _DARK_ZURICH),
    ("dark_zurich", "test", None): Published(151, None, _DARK_ZURICH),
    ("nighttime_driving", "test", None): Published(50, 50, "Dai and Van Gool, ITSC 2018"),
    ("bdd100k_night", "test", None): Published(87, 87, "brdav/refign's list of BDD100K 10K night images"),
}
for _condition in ACDC_CONDITIONS:
    _val = 106 if _condition == "night" else 100
    PUBLISHED |= {("acdc", "train", _condition): Published(400, 400, _ACDC),
                  ("acdc", "val", _condition): Published(_val, _val, _ACDC),
                  ("acdc", "test", _condition): Published(500, None, _ACDC)}


class Line(NamedTuple):
    """One line of the table: ``status`` is ``ok``, ``differs`` (a count other than the published
    one), ``fault`` or ``tolerated`` (a GTA5 size mismatch, as released)."""
    split: str
    what: str
    found: str
    published: str
    status: str
    example: str = ""


@dataclass
class DataCheck:
    """What ``check_dataset`` found; ``ok`` when every line is ``ok`` or ``tolerated``."""
    name: str
    root: Path
    deep: bool
    sample: int
    lines: list[Line] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where the published counts compared with come from
    listed: int = 0  # image and label files listed
    read: int = 0    # ... of which decoded

    @property
    def ok(self) -> bool:
        return all(line.status in ("ok", "tolerated") for line in self.lines)

    def differences(self) -> list[Line]:
        return [line for line in self.lines if line.status not in ("ok", "tolerated")]

    def what_was_read(self) -> str:
        how = ("every file (--deep)" if self.deep else
               f"a sample of up to {self.sample} evenly spaced image-label pairs per split (--deep reads every file)")
        return f"read {self.read} of {self.listed} files: {how}"

    def table(self) -> str:
        header = Line("split", "check", "found", "published", "status", "e.g.")
        rows = [header] + self.lines
        widths = [max(len(row[k]) for row in rows) for k in range(5)]
        text = [f"sepico check-data: {self.name} in {self.root}; {self.what_was_read()}",
                f"published counts: {'; '.join(self.sources)}"]
        text += ["  ".join(value.ljust(width) for value, width in zip(row[:5], widths)).rstrip()
                 + (f"  {row.example}" if row.example else "") for row in rows]
        differing = self.differences()
        text.append("the folder is as published" if not differing else
                    f"{len(differing)} line(s) differ from the published dataset")
        return "\n".join(text)

    def summary(self) -> dict:
        """The check in a run card: the counts per split, what was read, the differing lines."""
        counts = {}
        for line in self.lines:
            if line.what in ("images", "labels"):
                counts.setdefault(line.split, {})[line.what] = int(line.found)
        return {"dataset": self.name, "root": str(self.root), "counts": counts, "read": self.what_was_read(),
                "as_published": self.ok,
                "differences": [f"{line.split} {line.what}: {line.found} (published {line.published})"
                                + (f", e.g. {line.example}" if line.example else "") for line in self.differences()]}


def check_dataset(name: str, root, splits=None, *, deep: bool = False, sample: int = SAMPLE,
                  conditions=ACDC_CONDITIONS, day_night: bool = True, progress: bool = False) -> DataCheck:
    """Check ``splits`` (default: every published split) of the dataset ``name`` in ``root``.
    ``day_night``: also look for the daytime image of each training image (Dark Zurich, ACDC).
    ``ConfigError`` for an unknown dataset or split, or a root that is not a folder."""
    if name not in SPLITS:
        raise ConfigError(f"--data: unknown dataset {name!r}; choose one of {', '.join(REAL_DATASETS)}")
    splits = SPLITS[name] if splits is None else tuple(splits)
    unknown = [s for s in splits if s not in SPLITS[name]]
    if unknown:
        raise ConfigError(f"--split: {name} has the split(s) {', '.join(SPLITS[name])}, not {', '.join(unknown)}")
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--root: no folder {root}")
    check = DataCheck(name, root, deep, sample)
    for split in splits:
        for condition in (conditions if name == "acdc" else (None,)):
            _check_split(check, split, condition, day_night=day_night and split == DAY_NIGHT_SPLIT,
                         progress=progress)
    return check


def _check_split(check: DataCheck, split: str, condition, *, day_night: bool, progress: bool) -> None:
    name, root = check.name, check.root
    where = split if condition is None else f"{split}/{condition}"
    published = PUBLISHED[(name, split, condition)]
    if published.source not in check.sources:
        check.sources.append(published.source)

    def add(what, found, expected, status, example=""):
        check.lines.append(Line(where, what, str(found), "-" if expected is None else str(expected), status,
                                example))

    try:
        folder = SegmentationFolder(name, root, split, labelled=False,
                                    conditions=(condition,) if condition else ACDC_CONDITIONS)
    except DatasetError as err:
        add("images", 0, published.images, "differs", _relative_text(str(err), root))
        return
    images, labels = folder.images, folder.label_paths
    check.listed += len(images)
    add("images", len(images), published.images, "ok" if len(images) == published.images else "differs")
    labelled = published.labels is not None
    present = [path.is_file() for path in labels] if labelled else []
    if labelled:
        found = sum(present)
        check.listed += found
        add("labels", found, published.labels, "ok" if found == published.labels else "differs")
        missing = [(image, label) for image, label, there in zip(images, labels, present) if not there]
        add("images without their label", len(missing), 0, _fault(missing),
            f"{_relative(missing[0][0], root)} has no {_relative(missing[0][1], root)}" if missing else "")
    picked = range(len(images)) if check.deep else _evenly_spaced(len(images), check.sample)
    unreadable, sizes, undefined, read = [], [], [], 0
    for index in _progress(picked, progress, f"{name} {where}"):
        try:
            width, height = read_rgb(images[index]).size
        except DatasetError as err:
            unreadable.append(str(err))
            width = height = None
        read += 1
        if not labelled or not present[index]:
            continue
        try:
            ids = folder.read_label_ids(labels[index])
        except DatasetError as err:
            unreadable.append(str(err))
            continue
        finally:
            read += 1
        if width is not None and (ids.shape[1], ids.shape[0]) != (width, height):
            sizes.append(f"{_relative(labels[index], root)} is {ids.shape[1]} x {ids.shape[0]}, its image "
                         f"{width} x {height}")
        bad = folder.undefined_ids(ids)
        if bad:
            undefined.append(f"{_relative(labels[index], root)}: {bad[:8]}")
    check.read += read
    of = f" of {len(picked)}" if len(picked) < len(images) else ""
    if labelled:
        add("pairs of different sizes", f"{len(sizes)}{of}", 0,
            "tolerated" if sizes and name in SIZE_MISMATCH_TOLERATED else _fault(sizes), sizes[0] if sizes else "")
        add("labels with ids outside the scheme", f"{len(undefined)}{of}", 0, _fault(undefined),
            undefined[0] if undefined else "")
    add("unreadable files", f"{len(unreadable)}{of}", 0, _fault(unreadable),
        _relative_text(unreadable[0], root) if unreadable else "")
    if day_night and name in ("dark_zurich", "acdc"):
        try:
            _, problems = daytime_images(name, root, images)
        except CorrespondenceError as err:
            problems = [str(err)] * len(images)
        add("images without their daytime image", len(problems), 0, _fault(problems),
            _relative_text(problems[0], root) if problems else "")


def _fault(found) -> str:
    return "fault" if found else "ok"


def _evenly_spaced(count: int, sample: int) -> list[int]:
    """``sample`` indices of ``count`` items evenly spaced from the first to the last (all when fewer)."""
    if count <= sample:
        return list(range(count))
    if sample <= 1:
        return [0][:sample]
    return sorted({round(k * (count - 1) / (sample - 1)) for k in range(sample)})


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _relative_text(text: str, root: Path) -> str:
    return text.replace(f"{root}/", "")


def _progress(items, enabled: bool, what: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"check {what}", dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------- the command

def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help=f"the dataset the folder holds: {', '.join(REAL_DATASETS)}")
    p.add_argument("--root", required=True, help="the dataset folder (read, never written)")
    p.add_argument("--split", help="one split to check (default: every published split of the dataset)")
    p.add_argument("--deep", action="store_true", help="decode every image and label (default: a sample of "
                   f"{SAMPLE} evenly spaced pairs per split); either way the report says what it read")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (--deep shows one)")


def run_from_args(args) -> int:
    """Print the table; exit status 0 when the folder is as published, 1 otherwise."""
    check = check_dataset(args.data, args.root, None if args.split is None else (args.split,), deep=args.deep,
                          progress=args.deep and not args.no_progress)
    print(check.table())
    return 0 if check.ok else 1


__all__ = ["DataCheck", "Line", "PUBLISHED", "Published", "QUICK_SAMPLE", "SAMPLE", "SPLITS", "add_arguments",
           "check_dataset", "run_from_args"]
