"""python -m sample refuses bad input with one `error:` line (exit 2) before any work and leaves no partial
output; images of any mode and bit depth become the right pixels; a kill while writing leaves only a staging
that the next write removes."""

import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from kvjax import atomic
from kvjax.pipeline import images as images_lib
from kvjax.pipeline.images import fit_and_crop, open_image
from sample.__main__ import main
from sample.writers import write_frames, write_videos

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def no_work(monkeypatch):
  """Fails the test if any weights are made or loaded (the refusals must come before any work)."""
  from kvjax.pipeline import pipeline_weights as weights

  def work(*args, **kwargs):
    raise AssertionError("work started before the refusal")

  monkeypatch.setattr(weights, "random_weights", work)
  monkeypatch.setattr(weights, "load_pipeline_weights", work)


def png_header(width, height):
  """A PNG that only claims its size (what a decompression bomb's header says)."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def run_main(argv, tmp_path, capsys):
  code = main([a.format(tmp=tmp_path) for a in argv])
  err = capsys.readouterr().err
  return code, err


@pytest.mark.parametrize("argv,message", [
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--width", "8192"],
     "width and height (--width, --height) 8192x64 are too large: at most 4096 px a side"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/none", "--width", "3072", "--height", "3072"],
     "3072x3072 are too large"),  # converted weights: refused before they are loaded
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--height", "0"], "must be positive multiples of 32"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--seed", "-1"], "seed (--seed) must be in [0, 2**32)"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--seed", str(2 ** 32)], "seed (--seed) must be in"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--steps", "0", "2", "2"],
     "denoising steps (--steps KEY BASE INTERP) must be in [1, 1000], got key_frame_steps 0"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--cache-interval", "0"],
     "cache intervals (--cache-interval) must be in [1, the stage's step count], got key_frame_cache_interval 0"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--cache-interval", "3"],
     "got interpolation_cache_interval 3 (of 2 steps)"),  # random weights: 4 4 2 steps
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--cache-interval", "2", "2"],
     "--cache-interval takes one interval for every stage or three (KEY BASE INTERP), got 2"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--windows", "0"],
     "windows (--windows) must be in [1, 20] (the frames are held in host memory), got 0"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/none", "--windows", "21"], "must be in [1, 20]"),
    (["a", "b", "c", "--out", "{tmp}/v.gif", "--weights", "random", "--windows", "2", "--prompt-per-window"],
     "--prompt-per-window: 3 prompts for 2 windows (--windows): give one per window at most"),
    (["a", "b", "--out", "{tmp}/v.gif", "--weights", "random", "--prompt-per-window"], "2 prompts for 1 window"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--seconds", "102"],
     "seconds (--seconds) must be in (0, 101.292] at fps low (20 windows; the frames are held in host memory)"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--seconds", "0"], "seconds (--seconds) must be in (0, "),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--seconds", "9", "--windows", "2"],
     "--seconds 9 and --windows 2: give one of them"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--text-guidance", "nan"],
     "guidance_weight_prompt (--text-guidance) nan"),
    (["", "--out", "{tmp}/v.gif", "--weights", "random"], "the prompt is empty"),
    (["a fox", "  ", "--out", "{tmp}/v.gif", "--weights", "random"], "prompt 2 is empty"),
    (["x", "--out", "", "--weights", "random"], "--out is empty"),
    (["x", "--out", "{tmp}/taken.gif/v.gif", "--weights", "random"], "taken.gif is a file, not a folder"),
    (["x", "--out", "{tmp}/missing/v.gif", "--weights", "random"], "the folder {tmp}/missing does not exist"),
    (["x", "--out", "{tmp}/frames.mp4", "--weights", "random", "--overwrite"],
     "a folder of that name exists; it is not replaced by a .mp4 file"),
    (["x", "--out", "{tmp}", "--weights", "random", "--overwrite"], "the folder holds other files than PNG frames"),
    (["x", "--out", ".", "--weights", "random", "--overwrite"], "is the current folder or one above it"),
    (["x", "--out", "/", "--weights", "random", "--overwrite"], "is the root folder"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--image", "{tmp}"], "a folder, not an image file"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--image", "{tmp}/big.png"],
     "big.png: 10000x8000 is 76 megapixels; at most 64 megapixels are read"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--image", "{tmp}/bomb.png"],
     "bomb.png: 381 megapixels; at most 64 megapixels are read"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/noweights"], "--weights {tmp}/noweights: no such folder"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/badweights"],
     "badweights/sampling.json: width must be an integer, got '64'"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/hugeweights"],
     "hugeweights/sampling.json: width and height (--width, --height) 99968x64 are too large"),
])
def test_refusals_come_first_name_the_problem_and_leave_nothing(tmp_path, capsys, no_work, argv, message):
  (tmp_path / "taken.gif").write_bytes(b"keep")
  for name, values in (("badweights", '{"width": "64"}'), ("hugeweights", '{"width": 99968, "height": 64}')):
    (tmp_path / name).mkdir()
    (tmp_path / name / "sampling.json").write_text(values)
  (tmp_path / "frames.mp4").mkdir()
  (tmp_path / "big.png").write_bytes(png_header(10000, 8000))  # over kvjax's 64 megapixels, under PIL's bound
  (tmp_path / "bomb.png").write_bytes(png_header(20000, 20000))  # over PIL's DecompressionBombError bound
  before = sorted(os.listdir(tmp_path))
  code, err = run_main(argv, tmp_path, capsys)
  assert code == 2 and message.format(tmp=tmp_path) in err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "taken.gif").read_bytes() == b"keep"


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys, no_work, monkeypatch):
  folder = tmp_path / "read-only"
  folder.mkdir()
  # Root writes anywhere: the read-only folder is simulated where writability is asked.
  monkeypatch.setattr(atomic.os, "access", lambda path, mode: os.path.abspath(path) != str(folder))
  code, err = run_main(["x", "--out", f"{folder}/v.mp4", "--weights", "random"], tmp_path, capsys)
  assert code == 2 and err == f"error: --out '{folder}/v.mp4': cannot write in {folder}: permission denied\n"
  assert os.listdir(folder) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path, capsys, no_work):
  folder = tmp_path / "read-only"
  folder.mkdir()
  folder.chmod(0o555)
  try:
    code, err = run_main(["x", "--out", f"{folder}/v.mp4", "--weights", "random"], tmp_path, capsys)
  finally:
    folder.chmod(0o755)
  assert code == 2 and "permission denied" in err and os.listdir(folder) == []


def test_a_16_bit_png_becomes_the_same_grey_not_white(tmp_path):
  path = tmp_path / "grey16.png"
  Image.fromarray(np.full((40, 60), 32768, np.uint16)).save(path)
  with Image.open(path) as raw:
    assert raw.mode in ("I;16", "I")  # what PIL reads: a plain .convert("RGB") would clip it to 255
  image = open_image(str(path))
  assert image.mode == "L" and np.asarray(image).min() == np.asarray(image).max() == 128
  pixels = fit_and_crop(image, 32, 32)
  assert np.allclose(pixels, 128 / 255 * 2 - 1, atol=1e-6)
  assert np.allclose(fit_and_crop(Image.open(path), 32, 32), pixels)  # the library path alone, too
  ramp = Image.fromarray(np.array([[0, 257 * 64, 65535]], np.uint16))
  np.testing.assert_array_equal(np.asarray(images_lib.as_rgb_compatible(ramp)), [[0, 64, 255]])
  wide = Image.fromarray(np.array([[-5, 65535 * 2]], np.int32))  # mode I: clipped to the 16-bit range
  np.testing.assert_array_equal(np.asarray(images_lib.as_rgb_compatible(wide)), [[0, 255]])
  floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))  # mode F in [0, 1]
  np.testing.assert_array_equal(np.asarray(images_lib.as_rgb_compatible(floats)), [[0, 128, 255]])


@pytest.mark.parametrize("mode", ["P", "PA", "L", "LA", "CMYK", "1", "RGBA", "YCbCr", "I;16"])
def test_every_mode_becomes_the_rgb_it_shows(tmp_path, mode):
  rgb = np.zeros((32, 32, 3), np.uint8)
  rgb[:, :16] = (200, 40, 40)
  rgb[:, 16:] = (255, 255, 255)
  source = Image.fromarray(rgb)
  image = {"P": lambda: source.quantize(4), "PA": lambda: source.quantize(4).convert("PA"),
           "L": lambda: source.convert("L"), "LA": lambda: source.convert("LA"), "CMYK": lambda: source.convert("CMYK"),
           "1": lambda: source.convert("1"), "RGBA": lambda: source.convert("RGBA"),
           "YCbCr": lambda: source.convert("YCbCr"),
           "I;16": lambda: Image.fromarray((np.asarray(source.convert("L"), np.uint16) * 257))}[mode]()
  assert image.mode == mode
  if mode == "PA":  # no file format stores it: in memory
    out = fit_and_crop(image, 32, 32)
  else:
    tiff = mode in ("CMYK", "YCbCr")
    path = tmp_path / f"image.{'tiff' if tiff else 'png'}"
    # Deflate: Pillow 12 cannot read back the uncompressed YCbCr TIFF it writes ("image file is truncated").
    image.save(path, **({"compression": "tiff_deflate"} if tiff else {}))
    out = fit_and_crop(open_image(str(path)), 32, 32)
  expected = fit_and_crop(image.convert("RGB") if mode != "I;16" else source.convert("L"), 32, 32)
  assert out.shape == (32, 32, 3)
  np.testing.assert_allclose(out, expected, atol=2 / 255 * 2)
  if mode in ("P", "PA", "CMYK", "RGBA", "YCbCr"):  # the colours survive
    np.testing.assert_allclose((out[:, 0] + 1) / 2 * 255, np.tile([200, 40, 40], (32, 1)), atol=3)


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
  wide = np.zeros((20, 40, 3), np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # rotated 90 degrees: the camera was held upright
  Image.fromarray(wide).save(tmp_path / "photo.jpg", exif=exif)
  assert open_image(str(tmp_path / "photo.jpg")).size == (20, 40)


# A child process writes a video through sample.writers and is killed (SIGKILL, or SIGTERM under the CLI's
# sigterm_unwinds) half way through its frames.
KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from kvjax.atomic import sigterm_unwinds
    from sample import writers
    out, how = sys.argv[1], sys.argv[2]

    class Frames:  # a video that dies while it is written
        shape = (64, 32, 32, 3)
        def __len__(self):
            return 64
        def __iter__(self):
            for i in range(64):
                if i == 60:  # past x264's look-ahead: ffmpeg has opened its output
                    for _ in range(200):  # until the staging is on disk
                        if os.listdir(os.path.dirname(out)):
                            break
                        time.sleep(0.05)
                    print(os.listdir(os.path.dirname(out)), flush=True)
                    os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGTERM)
                yield np.full((32, 32, 3), 4 * i, np.uint8)

    with sigterm_unwinds():  # as python -m sample runs
        writers.write_frames(Frames(), out)
""")


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ""])
def test_a_kill_while_writing_leaves_a_staging_the_next_write_removes(tmp_path, capsys, suffix):
  out = tmp_path / f"video{suffix}"
  child = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out), "kill"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
  assert child.returncode == -signal.SIGKILL, child.stderr
  left = [name for name in os.listdir(tmp_path)]
  assert len(left) == 1 and left[0].startswith(f".video{suffix}.partial-") and not out.exists()

  frames = np.zeros((4, 32, 32, 3), np.uint8)
  write_frames(frames, str(out))
  err = capsys.readouterr().err
  assert "removed 1 leftover staging of" in err and str(out) in err and err.count("\n") == 1
  assert os.listdir(tmp_path) == [out.name]


def test_sigterm_while_writing_removes_the_staging(tmp_path):
  out = tmp_path / "video.gif"
  child = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out), "term"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
  assert child.returncode == 128 + signal.SIGTERM, child.stderr
  assert ".video.gif.partial-" in child.stdout  # it was staging when the signal came
  assert os.listdir(tmp_path) == []


def test_several_videos_are_written_all_or_none(tmp_path):
  good = np.zeros((3, 32, 32, 3), np.uint8)
  bad = np.zeros((3, 32, 32, 7), np.uint8)  # PIL cannot write 7 channels
  with pytest.raises(Exception):
    write_videos([good, bad], [str(tmp_path / "a.gif"), str(tmp_path / "b.gif")])
  assert os.listdir(tmp_path) == []
  assert write_videos([good, good], [str(tmp_path / "a.gif"), str(tmp_path / "b")]) == [
      str(tmp_path / "a.gif"), str(tmp_path / "b")]
  assert sorted(os.listdir(tmp_path)) == ["a.gif", "b"]
  write_videos([good], [str(tmp_path / "b")], overwrite=True)  # a folder of frames is replaced
  assert sorted(os.listdir(tmp_path / "b")) == ["0000.png", "0001.png", "0002.png"]
