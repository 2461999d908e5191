"""What each command does with damaged, crafted or misplaced input: the case table.

Every case below builds the situation in a fresh folder, runs the `sepico` command (in this
process through ``sepico.cli.main``; one case in a second process) and checks what happened to
every file. The same table, one row per case, is docs/safety.md's generated block:

    python -m tests.test_safety --docs docs/safety.md

and ``test_the_safety_page_is_this_table`` fails when the page and the cases part.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sepico.train.checkpoint import MARKER, RunFolder, atomic_save
from tests.helpers import cli, snapshot, tiny_toml, write_image

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "safety.md"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclass(frozen=True)
class Case:
    command: str
    given: str      # what the user gave the command
    outcome: str    # what the command does with it
    check: Callable  # check(tmp_path, weights): builds the situation, runs the command, asserts


CASES: list[Case] = []


def case(command: str, given: str, outcome: str):
    def register(fn):
        CASES.append(Case(command, given, outcome, fn))
        return fn
    return register


# --------------------------------------------------------------------------- helpers


def refused(code, err, *words, notes=False):
    """Exit status 2 and one line, the error, holding ``words``; with ``notes`` the run's own notes
    (where it goes, a warning) may come before the error line, which is the last."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("sepico: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and (notes or len(lines) == 1), err
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]




def trained_run(tmp: Path, **train) -> Path:
    run = tmp / "run"
    code, _, err = cli("train", tiny_toml(tmp, **train), "--no-progress", "--set", f"train.run_dir={run}")
    assert code == 0, err
    return run


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("ckpt_*.pt"))


def bomb_png(path: Path) -> Path:
    """A valid 1 x 1 PNG whose header claims 100000 x 100000 pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    header = bytearray(data[16:29])
    header[0:8] = struct.pack(">II", 100000, 100000)
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header)))
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- predict


@case("predict", "its output folder's own files as inputs (`d/* --out d`)",
      "refused before any work: the output folder may hold no input; nothing written")
def predict_glob_of_the_output_folder(tmp, weights):
    d = tmp / "d"
    write_image(d / "x.png")
    write_image(d / "x_color.png", seed=1)  # the user's own photo, named like a map of x.png
    before = snapshot(d)
    code, _, err = cli("predict", weights, d / "x.png", d / "x_color.png", "--out", d, "--no-progress")
    refused(code, err, "holds the input")
    assert snapshot(d) == before


@case("predict", "an input folder inside `--out`",
      "refused: the input folder lies inside --out (not 'no images')")
def predict_input_folder_inside_out(tmp, weights):
    write_image(tmp / "out" / "photos" / "a.png")
    code, _, err = cli("predict", weights, tmp / "out" / "photos", "--out", tmp / "out", "--no-progress")
    refused(code, err, "lies inside --out")


@case("predict", "`--out` holding a file of the user's under a map's name (`a_color.png`)",
      "refused unless --force: only earlier maps of sepico predict are replaced; nothing written")
def predict_foreign_file_in_out(tmp, weights):
    write_image(tmp / "in" / "a.png")
    write_image(tmp / "in" / "b.png", seed=2)
    user = write_image(tmp / "out" / "b_color.png", seed=3)
    before = snapshot(tmp / "out")
    code, _, err = cli("predict", weights, tmp / "in", "--out", tmp / "out", "--no-progress")
    refused(code, err, "b_color.png exists and is not an earlier result", "--force")
    assert snapshot(tmp / "out") == before  # not even a.png's maps: every target is checked first
    assert cli("predict", weights, tmp / "in", "--out", tmp / "out", "--no-progress", "--force")[0] == 0
    assert user.read_bytes() != before["b_color.png"]


@case("predict", "`--out` holding the maps of an earlier `sepico predict`",
      "replaced (a rerun), each atomically")
def predict_rerun(tmp, weights):
    write_image(tmp / "in" / "a.png")
    for _ in range(2):
        code, _, err = cli("predict", weights, tmp / "in", "--out", tmp / "out", "--no-progress", "--overlay")
        assert code == 0, err
    assert sorted(snapshot(tmp / "out")) == ["a_color.png", "a_overlay.png"]


@case("predict", "a link in `--out` under a map's name, pointing to a file outside",
      "refused; with --force the link itself is replaced and the file it points to is untouched")
def predict_link_in_out(tmp, weights):
    write_image(tmp / "in" / "a.png")
    outside = write_image(tmp / "precious.png", seed=5)
    before = outside.read_bytes()
    (tmp / "out").mkdir()
    (tmp / "out" / "a_color.png").symlink_to(outside)
    code, _, err = cli("predict", weights, tmp / "in", "--out", tmp / "out", "--no-progress")
    refused(code, err, "is a link")
    assert cli("predict", weights, tmp / "in", "--out", tmp / "out", "--no-progress", "--force")[0] == 0
    assert outside.read_bytes() == before and not (tmp / "out" / "a_color.png").is_symlink()


@case("predict", "a map's name in `--out` that is a link or a hard link to an input",
      "refused, also with --force: an input is never replaced")
def predict_link_to_an_input(tmp, weights):
    a = write_image(tmp / "in" / "a.png")
    before = a.read_bytes()
    (tmp / "out").mkdir()
    os.link(a, tmp / "out" / "a_color.png")
    code, _, err = cli("predict", weights, a, "--out", tmp / "out", "--no-progress", "--force")
    refused(code, err, "also an input")
    (tmp / "out" / "a_color.png").unlink()
    (tmp / "out" / "a_color.png").symlink_to(a)
    code, _, err = cli("predict", weights, a, "--out", tmp / "out", "--no-progress", "--force")
    refused(code, err, "also an input")
    assert a.read_bytes() == before


@case("predict", "links planted under the fixed temporary names of earlier versions (`.a_color.png.tmp`)",
      "never written through: temporaries are created exclusively under fresh random names")
def predict_planted_temporaries(tmp, weights):
    write_image(tmp / "in" / "a.png")
    outside = tmp / "outside.png"
    outside.write_bytes(b"the user's")
    (tmp / "out").mkdir()
    for name in (".a_color.png.tmp", ".a_labelTrainIds.png.tmp"):
        (tmp / "out" / name).symlink_to(outside)
    code, _, err = cli("predict", weights, tmp / "in", "--out", tmp / "out", "--no-progress", "--trainids")
    assert code == 0, err
    assert outside.read_bytes() == b"the user's"
    assert not [p for p in (tmp / "out").iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


@case("predict", "a PNG claiming 100000 x 100000 pixels; a zero-byte, a truncated and a not-an-image file",
      "each named in one line and skipped, the other images predicted; exit 1")
def predict_damaged_images(tmp, weights):
    d = tmp / "in"
    write_image(d / "good.png")
    bomb_png(d / "bomb.png")
    (d / "zero.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(write_image(tmp / "t.png", 40, 40).read_bytes()[:200])
    (d / "text.jpg").write_text("not an image")
    code, out, err = cli("predict", weights, d, "--out", tmp / "out", "--no-progress")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("sepico: skipping") for line in lines), err
    assert "exceeds limit" in next(line for line in lines if "bomb.png" in line)
    assert json.loads(out)["predicted"] == 1 and (tmp / "out" / "good_color.png").is_file()


@case("predict", "a 16-bit PNG, a JPEG with an EXIF orientation, bmp / webp / tif files",
      "decoded as mmcv's imread (cv2 IMREAD_COLOR) decodes them: high byte, rotated, read")
def predict_image_kinds(tmp, weights):
    from sepico.data.real import read_rgb

    d = tmp / "in"
    d.mkdir()
    grey = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) * 109 % 65536).astype(np.uint16)
    cv2.imwrite(str(d / "grey16.png"), grey)
    cv2.imwrite(str(d / "rgb16.png"), np.stack([grey, grey[::-1], 65535 - grey], -1))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    write_image(d / "phone.jpg", 20, 40, 1, exif=exif, quality=95)
    for suffix in ("bmp", "webp", "tif"):
        write_image(d / f"{suffix}.{suffix}", 12, 18, 2, **({"lossless": True} if suffix == "webp" else {}))
    for name in ("grey16.png", "rgb16.png", "phone.jpg", "bmp.bmp", "webp.webp", "tif.tif"):
        ours = np.asarray(read_rgb(d / name))
        np.testing.assert_array_equal(ours, cv2.imread(str(d / name), cv2.IMREAD_COLOR)[..., ::-1], err_msg=name)
    assert np.asarray(read_rgb(d / "phone.jpg")).shape == (40, 20, 3)  # stands as taken
    code, out, err = cli("predict", weights, d, "--out", tmp / "out", "--no-progress")
    assert code == 0 and json.loads(out)["predicted"] == 6, err
    assert np.asarray(Image.open(tmp / "out" / "phone_color.png")).shape == (40, 20, 3)


@case("predict", "a photo far larger than the test size",
      "predicted at the file's test size (as eval); the argmax at the photo's size holds a few classes "
      "at a time, with the ids of the full resize")
def predict_large_photo(tmp, weights):
    import torch.nn.functional as F

    from sepico.evaluation import resized_argmax

    g = torch.Generator().manual_seed(0)
    for shape, size in (((1, 19, 37, 53), (301, 517)), ((2, 19, 16, 16), (203, 999)), ((1, 7, 5, 9), (64, 3))):
        scores = torch.randn(*shape, generator=g)
        full = F.interpolate(scores, size=size, mode="bilinear", align_corners=False).argmax(1)
        for budget in (1, size[0] * size[1], 7 * size[0] * size[1]):
            assert torch.equal(resized_argmax(scores, size, max_elements=budget), full)
    state = torch.load(weights, weights_only=True)
    state["config"]["data"]["test_size"] = [24, 32]
    sized = tmp / "sized.pt"
    atomic_save(state, sized)
    write_image(tmp / "in" / "big.png", 96, 128)
    code, out, err = cli("predict", sized, tmp / "in", "--out", tmp / "out", "--no-progress")
    assert code == 0 and json.loads(out)["size"] == [24, 32], err
    assert np.asarray(Image.open(tmp / "out" / "big_color.png")).shape == (96, 128, 3)


@case("predict", "`--palette` naming a file that is not a JSON list of colours; `--opacity 0`",
      "one line naming the option, exit 2; nothing written")
def predict_bad_palette(tmp, weights):
    write_image(tmp / "in" / "a.png")
    (tmp / "colours.json").write_text("[[1, 2]]")
    refused(*cli("predict", weights, tmp / "in", "--out", tmp / "out", "--palette", tmp / "colours.json")[::2],
            "--palette")
    refused(*cli("predict", weights, tmp / "in", "--out", tmp / "out", "--opacity", "0")[::2], "--opacity")
    assert not (tmp / "out").exists()


# --------------------------------------------------------------------------- eval


@case("eval", "`--out` naming the checkpoint being evaluated",
      "refused before the evaluation; the checkpoint is untouched")
def eval_out_is_the_checkpoint(tmp, weights):
    ckpt = tmp / "c.pt"
    ckpt.write_bytes(weights.read_bytes())
    code, _, err = cli("eval", ckpt, "--out", ckpt, "--no-progress", "--force")
    refused(code, err, "also an input")
    assert ckpt.read_bytes() == weights.read_bytes()


@case("eval", "`--out` naming another checkpoint (any torch or safetensors file)",
      "refused, also with --force: a result never replaces model weights")
def eval_out_is_another_checkpoint(tmp, weights):
    other = tmp / "other.pt"
    torch.save({"x": torch.ones(2)}, other)
    before = other.read_bytes()
    refused(*cli("eval", weights, "--out", other, "--no-progress", "--force")[::2], "holds model weights")
    assert other.read_bytes() == before


@case("eval", "`--out` naming a file that is not an earlier result; an earlier result",
      "the first refused unless --force; the second replaced")
def eval_out_replaces_only_results(tmp, weights):
    notes = tmp / "notes.json"
    notes.write_text('{"mine": true}\n')
    refused(*cli("eval", weights, "--out", notes, "--no-progress")[::2], "not an earlier result", "--force")
    assert notes.read_text() == '{"mine": true}\n'
    result = tmp / "result.json"
    for _ in range(2):
        code, _, err = cli("eval", weights, "--out", result, "--no-progress")
        assert code == 0, err
    assert json.loads(result.read_text())["command"] == "sepico eval"
    assert cli("eval", weights, "--out", notes, "--no-progress", "--force")[0] == 0
    assert json.loads(notes.read_text())["command"] == "sepico eval"


@case("eval", "`--out` naming a link",
      "refused; with --force the link itself is replaced, never written through")
def eval_out_is_a_link(tmp, weights):
    target = tmp / "elsewhere.txt"
    target.write_text("keep")
    (tmp / "result.json").symlink_to(target)
    refused(*cli("eval", weights, "--out", tmp / "result.json", "--no-progress")[::2], "is a link")
    assert cli("eval", weights, "--out", tmp / "result.json", "--no-progress", "--force")[0] == 0
    assert target.read_text() == "keep" and not (tmp / "result.json").is_symlink()


@case("eval", "`--out` naming a folder, or a file in a missing folder",
      "one line, exit 2")
def eval_out_is_a_folder(tmp, weights):
    refused(*cli("eval", weights, "--out", tmp, "--no-progress")[::2], "is a folder")
    refused(*cli("eval", weights, "--out", tmp / "no" / "r.json", "--no-progress")[::2], "no folder")


@case("eval", "`--card` (or the card beside `--out`, `<stem>.card.json`) naming a file that is not an earlier "
      "card; naming the checkpoint",
      "refused before the evaluation unless --force, the checkpoint also with it; an earlier card of sepico eval "
      "is replaced")
def eval_card_replaces_only_cards(tmp, weights):
    result, card = tmp / "r.json", tmp / "r.card.json"
    few = ("--set", "data.test_length=2")
    card.write_text("my notes\n")
    refused(*cli("eval", weights, "--out", result, "--no-progress")[::2], "--card", "r.card.json", "--force")
    assert card.read_text() == "my notes\n" and not result.exists()
    refused(*cli("eval", weights, "--card", weights, "--no-progress", "--force")[::2], "--card takes a .json")
    ckpt = tmp / "c.json"  # a weight file under a .json name is still weights
    ckpt.write_bytes(weights.read_bytes())
    refused(*cli("eval", ckpt, "--card", ckpt, "--no-progress", "--force")[::2], "also an input")
    assert ckpt.read_bytes() == weights.read_bytes()
    for _ in range(2):
        code, _, err = cli("eval", weights, "--card", tmp / "mine.json", "--no-progress", *few)
        assert code == 0, err
    assert json.loads((tmp / "mine.json").read_text())["command"] == "sepico eval" and (tmp / "mine.md").is_file()
    assert cli("eval", weights, "--out", result, "--no-progress", "--force", *few)[0] == 0
    assert json.loads(card.read_text())["format"] == "sepico-card-1"


@case("eval --export", "a link to a PNG outside, planted in the export's `labelTrainIds/`",
      "left out of the submission zip: the zip holds exactly the regular files the export wrote")
def export_zip_takes_its_own_files(tmp, weights):
    import zipfile

    root = tmp / "dark_zurich"
    write_image(root / "rgb_anon" / "test" / "night" / "GOPR0364" / "GOPR0364_frame_000000_rgb_anon.png")
    secret = write_image(tmp / "secret.png", seed=9)
    out = tmp / "export"
    (out / "labelTrainIds").mkdir(parents=True)
    (out / "labelTrainIds" / "extra.png").symlink_to(secret)
    code, _, err = cli("eval", weights, "--data", "dark_zurich", "--root", root, "--split", "test", "--export", out,
                       "--no-progress")
    assert code == 0, err
    with zipfile.ZipFile(out / "dark_zurich_submission.zip") as archive:
        names = archive.namelist()
    assert "labelTrainIds/GOPR0364_frame_000000_rgb_anon.png" in names
    assert not any("extra" in n for n in names) and len(names) == 3


@case("eval", "a checkpoint whose weights hold NaN or infinite values",
      "refused in one line naming the tensors (not an mIoU of 4)")
def eval_nan_weights(tmp, weights):
    state = torch.load(weights, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key][0] = float("nan")
    bad = tmp / "nan.pt"
    atomic_save(state, bad)
    refused(*cli("eval", bad, "--no-progress")[::2], "NaN or infinite", key)


@case("eval", "a checkpoint whose configuration names an unknown model",
      "one line naming the field")
def eval_unknown_model_name(tmp, weights):
    state = torch.load(weights, weights_only=True)
    state["config"]["model"]["name"] = "resnet9000"
    bad = tmp / "bad.pt"
    atomic_save(state, bad)
    refused(*cli("eval", bad, "--no-progress")[::2], "'model.name'", "resnet9000")


@case("eval", "`--data foo`; `--device foo`",
      "one line naming the option and its choices (not 'give --root', not 'train.device')")
def eval_bad_options(tmp, weights):
    refused(*cli("eval", weights, "--data", "foo")[::2], "--data: unknown dataset 'foo'", "cityscapes")
    line = refused(*cli("eval", weights, "--device", "foo")[::2], "--device")
    assert "train.device" not in line


@case("eval", "`--data synthetic` for a checkpoint of a day-night run",
      "evaluated: training-only fields (method.day_night, method.pseudo_crop) do not apply to an evaluation")
def eval_training_only_fields(tmp, weights):
    state = torch.load(weights, weights_only=True)
    state["config"]["data"] |= {"target": "dark_zurich", "target_root": str(tmp), "crop_size": [16, 16]}
    state["config"]["method"] |= {"day_night": True, "pseudo_crop": True}
    night = tmp / "night.pt"
    atomic_save(state, night)
    code, out, err = cli("eval", night, "--data", "synthetic", "--no-progress")
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["dataset"] == "synthetic"


@case("eval", "a plain pickle that is not a torch file; a pickle that calls code",
      "one line naming the file, no torch warning; nothing in it is run")
def eval_pickles(tmp, weights):
    import pickle

    raw = tmp / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    refused(*cli("eval", raw)[::2], "raw.pkl: not a readable checkpoint")
    marker = tmp / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp / "evil.pt"
    torch.save({"config": {}, "model": Payload()}, evil)
    refused(*cli("eval", evil)[::2], "refused", "nothing in it was run")
    assert not marker.exists()


# --------------------------------------------------------------------------- convert


@case("convert", "the destination is the source (also through a link)",
      "refused; the official file is untouched")
def convert_onto_itself(tmp, weights):
    from tests.test_convert import mmcv_checkpoint

    src = tmp / "official.pth"
    torch.save(mmcv_checkpoint("deeplab", "training")[0], src)
    before = src.read_bytes()
    refused(*cli("convert", src, src, "--model", "deeplabv2_r18", "--force")[::2], "the file being converted")
    (tmp / "link.pth").symlink_to(src)
    refused(*cli("convert", src, tmp / "link.pth", "--model", "deeplabv2_r18", "--force")[::2],
            "the file being converted")
    assert src.read_bytes() == before


@case("convert", "an existing destination; a folder as destination",
      "refused unless --force; a folder in one line")
def convert_existing_destination(tmp, weights):
    from tests.test_convert import mmcv_checkpoint

    src = tmp / "official.pth"
    torch.save(mmcv_checkpoint("deeplab", "training")[0], src)
    dst = tmp / "ours.pt"
    dst.write_bytes(b"the user's")
    refused(*cli("convert", src, dst, "--model", "deeplabv2_r18")[::2], "exists", "--force")
    assert dst.read_bytes() == b"the user's"
    refused(*cli("convert", src, tmp, "--model", "deeplabv2_r18")[::2], "is a folder")
    assert cli("convert", src, dst, "--model", "deeplabv2_r18", "--force")[0] == 0
    assert torch.load(dst, weights_only=True)["format"] == "sepico-converted-1"


@case("convert", "an mmcv checkpoint whose meta holds numpy scalars",
      "converted: numpy scalars are plain data (every other object is still refused)")
def convert_numpy_scalars(tmp, weights):
    from tests.test_convert import mmcv_checkpoint

    official = mmcv_checkpoint("deeplab", "training")[0]
    official["meta"] |= {"best_score": np.float64(61.0), "iter": np.int64(40000), "flag": np.bool_(True)}
    src = tmp / "official.pth"
    torch.save(official, src)
    code, _, err = cli("convert", src, tmp / "ours.pt", "--model", "deeplabv2_r18")
    assert code == 0, err
    official["meta"]["array"] = np.zeros(3)
    torch.save(official, src)
    refused(*cli("convert", src, tmp / "again.pt", "--model", "deeplabv2_r18")[::2], "refused")


# --------------------------------------------------------------------------- train


@case("train", "a second `sepico train` into a folder a running one holds",
      "refused in one line naming the running process; nothing of the first run touched")
def train_two_at_once(tmp, weights):
    run = tmp / "run"
    holder = RunFolder(run)
    holder.claim()  # this process holds the folder, as a running training would
    try:
        before = snapshot(run)
        proc = subprocess.run([sys.executable, "-m", "sepico.cli", "train", str(tiny_toml(tmp)), "--no-progress",
                               "--overwrite", "--set", f"train.run_dir={run}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        refused(proc.returncode, proc.stderr, "in use by another sepico run", f"pid {os.getpid()}")
        assert snapshot(run) == before
    finally:
        holder.release()


@case("train", "a run folder whose marker a killed process left",
      "taken: the lock went with the process, so no stale lock remains")
def train_after_a_killed_run(tmp, weights):
    run = tmp / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / MARKER).write_text(f"{dead.stdout.strip()} somehost\n")
    code, _, err = cli("train", tiny_toml(tmp), "--no-progress", "--set", f"train.run_dir={run}")
    assert code == 0, err


@case("train", "a folder holding another tool's `config.json` and the user's `train.log`, with or "
      "without --overwrite", "refused: the folder is not a sepico run; nothing deleted or written")
def train_foreign_run_files(tmp, weights):
    folder = tmp / "theirs"
    folder.mkdir()
    (folder / "config.json").write_text('{"learning_rate": 3}')
    (folder / "train.log").write_text("a week of notes\n")
    before = snapshot(folder)
    for extra in ((), ("--overwrite",)):
        code, _, err = cli("train", tiny_toml(tmp), "--no-progress", "--set", f"train.run_dir={folder}", *extra)
        refused(code, err, "not a sepico run's")
    assert snapshot(folder) == before


@case("train", "`--overwrite` in a sepico run folder that also holds the user's notes",
      "only the run's files are removed (and named); the notes stay")
def train_overwrite_keeps_other_files(tmp, weights):
    run = trained_run(tmp)
    (run / "notes.txt").write_text("mine")
    code, _, err = cli("train", tiny_toml(tmp), "--no-progress", "--overwrite", "--set", f"train.run_dir={run}")
    assert code == 0 and "--overwrite: removing" in err, err
    assert (run / "notes.txt").read_text() == "mine"


@case("train --resume", "a newer checkpoint that does not load, beside valid ones",
      "skipped and named; pruning never counts or deletes it and keeps the checkpoint just written; "
      "the run resumes again")
def train_prune_with_an_unreadable_checkpoint(tmp, weights):
    run = trained_run(tmp, max_iters=4, keep_checkpoints=1)
    assert checkpoints(run) == ["ckpt_00000004.pt"]
    (run / "ckpt_00000100.pt").write_bytes(b"\0" * 100)
    code, _, err = cli("train", "--resume", run, "--no-progress", "--set", "train.max_iters=6")
    assert code == 0, err
    assert "skipping" in err and "leaving" in err and "ckpt_00000100.pt" in err
    assert checkpoints(run) == ["ckpt_00000006.pt", "ckpt_00000100.pt"]
    code, out, err = cli("train", "--resume", run, "--no-progress", "--set", "train.max_iters=8")
    assert code == 0 and json.loads(out)["iteration"] == 8, err


@case("train", "`name = \"../../escape\"`, an absolute or an empty name",
      "one line naming the field; nothing written (train.run_dir chooses a folder)")
def train_name_is_a_name(tmp, weights):
    for name in ("../../escape", str(tmp / "abs"), ""):
        code, _, err = cli("train", tiny_toml(tmp), "--set", f"name={name}")
        refused(code, err, "config field 'name'")
    assert not (tmp / "abs").exists() and not (tmp.parent.parent / "escape").exists()


@case("train", "a config file that is not UTF-8; `data.train_length = 10**13`; `train.run_dir` naming a file",
      "one line each, exit 2; nothing written")
def train_bad_config_values(tmp, weights):
    bad = tmp / "bad.toml"
    bad.write_bytes(b'name = "\xff\xfe"\n')
    refused(*cli("train", bad)[::2], "not UTF-8")
    refused(*cli("train", tiny_toml(tmp), "--set", "data.train_length=10000000000000")[::2], "'data.train_length'")
    (tmp / "afile").write_text("x")
    refused(*cli("train", tiny_toml(tmp), "--set", f"train.run_dir={tmp / 'afile'}")[::2], "is a file")
    assert (tmp / "afile").read_text() == "x"


@case("train", "a label id the dataset does not define",
      "one line naming the label file; no checkpoint written for a run that trained nothing")
def train_unknown_label_id(tmp, weights):
    from tests.helpers import make_cityscapes, make_gta5, real_config

    gta5 = make_gta5(tmp / "gta5")
    label = gta5 / "labels" / "00000.png"
    ids = np.asarray(Image.open(label)).copy()
    ids[0, 0] = 250
    Image.fromarray(ids).save(label)
    cfg = real_config(tmp, "gta5", gta5, "cityscapes", make_cityscapes(tmp / "cityscapes"))
    config = tmp / "real.toml"
    config.write_text(_toml(cfg.to_dict()))
    code, _, err = cli("train", config, "--no-progress", "--set", "data.source_size=0,0")
    refused(code, err, "00000.png", "no checkpoint written", notes=True)
    assert not list((tmp / "run").glob("ckpt_*.pt"))


@case("train --resume", "a damaged `metrics.jsonl` (a record that is not an object) or `config.json` "
      "(not JSON, or not sections of fields)", "one line naming the file; nothing changed")
def train_resume_damaged_run_files(tmp, weights):
    run = trained_run(tmp)
    metrics = run / "metrics.jsonl"
    metrics.write_text("[1, 2]\n" + metrics.read_text())
    before = snapshot(run)
    refused(*cli("train", "--resume", run, "--no-progress", "--set", "train.max_iters=3")[::2], "metrics.jsonl",
            notes=True)
    assert snapshot(run) == before
    for text in ("{not json", '["a list"]', '{"data": 3}'):
        (run / "config.json").write_text(text)
        refused(*cli("train", "--resume", run, "--no-progress")[::2], "config.json")


@case("train --resume", "a checkpoint that lacks a part or holds tensors of other shapes",
      "one line naming it; it is kept")
def train_resume_incomplete_checkpoint(tmp, weights):
    run = trained_run(tmp)
    path = run / "ckpt_00000002.pt"
    state = torch.load(path, weights_only=True)
    del state["teacher"]
    atomic_save(state, path)
    refused(*cli("train", "--resume", run, "--no-progress", "--set", "train.max_iters=3")[::2],
            "ckpt_00000002.pt is not a complete checkpoint", "teacher")
    state["teacher"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
    atomic_save(state, path)
    refused(*cli("train", "--resume", run, "--no-progress", "--set", "train.max_iters=3")[::2],
            "ckpt_00000002.pt is not a complete checkpoint")
    assert path.is_file()


@case("train", "`data.class_stats` naming a file that is not a class-statistics cache; a damaged cache",
      "the first refused and never replaced; the second computed again")
def train_class_stats_cache(tmp, weights):
    from tests.helpers import make_cityscapes, make_gta5, real_config

    cfg = real_config(tmp, "gta5", make_gta5(tmp / "gta5"), "cityscapes", make_cityscapes(tmp / "cityscapes"),
                      rcs_temperature=0.01, rcs_min_pixels=1)
    theirs = tmp / "stats.json"
    theirs.write_text('{"their": "data"}')
    config = tmp / "real.toml"
    config.write_text(_toml(cfg.to_dict()))
    refused(*cli("train", config, "--no-progress", "--set", f"data.class_stats={theirs}")[::2],
            "not a sepico class-statistics cache", notes=True)
    assert theirs.read_text() == '{"their": "data"}'
    ours = tmp / "ours.json"
    ours.write_text('{"format": "sepico-class-stats-1", "num_cl')  # cut short
    code, _, err = cli("train", config, "--no-progress", "--set", f"data.class_stats={ours}",
                       "--set", "train.max_iters=1")
    assert code == 0, err
    assert json.loads(ours.read_text())["format"] == "sepico-class-stats-1"


@case("train --resume", "`--set train.run_dir=OTHER` (or a config naming another run_dir)",
      "refused: a resumed run continues where its checkpoints are")
def train_resume_elsewhere(tmp, weights):
    run = trained_run(tmp)
    refused(*cli("train", "--resume", run, "--set", f"train.run_dir={tmp / 'other'}")[::2],
            "is not the run folder")
    assert not (tmp / "other").exists()


@case("train --resume", "a run that has finished",
      "says so and exits 0 with its result; nothing evaluated, trained or appended")
def train_resume_finished(tmp, weights):
    run = trained_run(tmp)
    before = snapshot(run)
    code, out, err = cli("train", "--resume", run, "--no-progress")
    assert code == 0 and "finished at iteration 2 of 2" in err, err
    assert json.loads(out)["iteration"] == 2
    assert snapshot(run) == before


@case("train", "torchrun with several processes",
      "the final JSON line is printed by rank 0 only")
def train_prints_on_rank_zero(tmp, weights):
    import sepico.train as train

    class Rank1:
        def __init__(self, cfg, run_dir, **kw):
            self.rank, self.run_dir, self.iteration = 1, run_dir, 2

        def train(self):
            return {"miou": 1.0}

    real = train.Trainer
    train.Trainer = Rank1
    try:
        code, out, err = cli("train", tiny_toml(tmp), "--no-progress")
    finally:
        train.Trainer = real
    assert code == 0 and out == "", (out, err)


@case("plot", "a folder with metrics.jsonl and a `curves.png` that is not an earlier plot",
      "refused unless --force; an earlier plot is redrawn")
def plot_foreign_curves(tmp, weights):
    run = trained_run(tmp)  # its curves.png is a plot of ours
    assert cli("plot", run)[0] == 0
    (run / "curves.png").write_bytes(b"the user's picture")
    refused(*cli("plot", run)[::2], "curves.png exists and is not an earlier result", "--force")
    assert (run / "curves.png").read_bytes() == b"the user's picture"
    assert cli("plot", run, "--force")[0] == 0


# --------------------------------------------------------------------------- ablate


@case("ablate", "a rerun into the same `--out` with other `--iters` or `--set`",
      "refused, naming the run and the differing settings (never the old results passed off as new)")
def ablate_rerun_with_other_settings(tmp, weights):
    from sepico import ablation

    run = ablation.plan([0], quick=True)[0]
    config = tiny_toml(tmp, name="demo")
    ablation.execute(run, config, tmp / "ab", 2, [], False)
    assert ablation.execute(run, config, tmp / "ab", 2, [], False)["miou"] is not None  # same settings: read back
    from sepico.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trained with other settings \(train.max_iters"):
        ablation.execute(run, config, tmp / "ab", 3, [], False)
    with pytest.raises(ConfigError, match=r"optim.lr"):
        ablation.execute(run, config, tmp / "ab", 2, ["optim.lr=0.5"], False)


# --------------------------------------------------------------------------- check-data, card


@case("check-data", "a dataset folder holding a truncated label, a label with an id the dataset does not define "
      "and an image without its label",
      "each named on its line of the table, exit 1, no traceback; nothing in the folder written or touched")
def check_data_on_a_damaged_folder(tmp, weights):
    from tests.helpers import make_gta5

    root = make_gta5(tmp / "gta5", n=3)
    label = root / "labels" / "00000.png"
    label.write_bytes(label.read_bytes()[:50])
    ids = np.full((40, 72), 7, np.uint8)
    ids[0, 0] = 250
    Image.fromarray(ids).save(root / "labels" / "00001.png")
    (root / "labels" / "00002.png").unlink()
    before = snapshot(root)
    code, out, err = cli("check-data", "--data", "gta5", "--root", root)
    assert code == 1 and "Traceback" not in err, err
    for words in ("labels/00000.png: cannot read the label", "labels/00001.png: [250]", "has no labels/00002.png"):
        assert words in out, out
    assert snapshot(root) == before


@case("card", "a file that is not a run card; a run folder without card.json",
      "one line naming it, exit 2")
def card_of_something_else(tmp, weights):
    (tmp / "result.json").write_text('{"miou": 50.0}')
    (tmp / "run").mkdir()
    for bad, words in ((tmp / "result.json", "not a sepico run card"), (tmp / "run", "no card.json")):
        refused(*cli("card", bad, bad)[::2], str(bad), words)


def _toml(data: dict) -> str:
    """A run configuration dict as TOML (strings, numbers, booleans, lists; None left out)."""
    lines = [f"name = {json.dumps(data['name'])}"]
    for section, fields in data.items():
        if isinstance(fields, dict):
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                      for key, v in fields.items() if v is not None]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the table and its page


@pytest.mark.parametrize("item", CASES, ids=[c.check.__name__ for c in CASES])
def test_case(item, tmp_path, weights):
    item.check(tmp_path, weights)


def table() -> str:
    rows = ["| command | given | what happens |", "|---|---|---|"]
    rows += [f"| `sepico {c.command}` | {c.given} | {c.outcome} |" for c in CASES]
    return "\n".join(rows) + "\n"


def test_the_safety_page_is_this_table():
    from sepico.pages import read_block

    assert read_block(PAGE, "safety-cases") == table().strip("\n"), (
        "docs/safety.md is out of date: python -m tests.test_safety --docs docs/safety.md")


if __name__ == "__main__":
    import argparse

    from sepico.pages import write_block

    parser = argparse.ArgumentParser(prog="python -m tests.test_safety", description="write the case table")
    parser.add_argument("--docs", metavar="PAGE", required=True, help="the page whose 'safety-cases' block to rewrite")
    write_block(parser.parse_args().docs, "safety-cases", table())
