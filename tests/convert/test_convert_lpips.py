"""`python -m convert lpips` on the tiny preset: the package's heads-file layout plus a torchvision-layout VGG
state dict (classifier included) in, a converted folder out; errors exit 2, name the key and write nothing.
Parity with the `lpips` package itself is tests/kvjax/test_lpips.py."""

import flax.traverse_util
import numpy as np

from convert.__main__ import main
from kvjax import model_configs
from kvjax.checkpoints.torch_zip_writer import write_torch_zip
from kvjax.conversion.lpips import IGNORED_COUNT
from kvjax.conversion.naming import from_flax_layout, torch_key
from kvjax.conversion.store import load_converted
from kvjax.params import random_params

TINY = model_configs.LPIPS_TINY


def _sources(tmp_path):
  """(heads file, torchvision-layout VGG file, the Flax parameters they hold)."""
  params = random_params(TINY, 0)
  flat = {path: np.abs(np.asarray(v)) if path[0].startswith("lin") else np.asarray(v)
          for path, v in flax.traverse_util.flatten_dict(params).items()}
  heads, vgg = {}, {"classifier.0.weight": np.ones((4, 2), np.float32), "classifier.0.bias": np.ones(4, np.float32)}
  for path, value in flat.items():
    key, tensor = torch_key(path), np.ascontiguousarray(from_flax_layout(value, path, False))
    if path[0] == "net":  # net.slice{s}.{i}.weight -> features.{i}.weight
      vgg["features." + key.split(".", 2)[2]] = tensor
    else:
      heads[key] = tensor
  write_torch_zip(tmp_path / "vgg.pth", heads)
  write_torch_zip(tmp_path / "vgg16.pth", vgg)
  return str(tmp_path / "vgg.pth"), str(tmp_path / "vgg16.pth"), flat


def test_convert_lpips_writes_a_loadable_folder(tmp_path, capsys):
  heads, vgg, flat = _sources(tmp_path)
  out = tmp_path / "lpips"
  assert main(["lpips", heads, str(out), "--vgg", vgg, "--config", "lpips-tiny"]) == 0
  assert "2 classifier tensors left out" in capsys.readouterr().out
  loaded = load_converted(out)
  assert loaded.kind == "lpips" and loaded.config == TINY and int(loaded.extras[IGNORED_COUNT]) == 2
  got = flax.traverse_util.flatten_dict(loaded.params)
  assert got.keys() == flat.keys()
  for path, value in flat.items():
    np.testing.assert_array_equal(got[path], value, err_msg="/".join(path))


def test_convert_lpips_errors_write_nothing(tmp_path, capsys):
  heads, vgg, _ = _sources(tmp_path)
  out = tmp_path / "lpips"
  assert main(["lpips", heads, str(out), "--config", "lpips-tiny"]) == 2  # no --vgg: no backbone
  err = capsys.readouterr().err
  assert "missing keys" in err and "net.slice1.0.weight (8, 3, 3, 3)" in err and not out.exists()
  assert main(["lpips", heads, str(out), "--vgg", vgg, "--config", "keyframe-tiny"]) == 2
  assert "an LPIPS preset" in capsys.readouterr().err and not out.exists()
  assert main(["lpips", heads, str(out), "--vgg", vgg]) == 2  # the tiny files against the VGG16 preset
  assert "mis-shaped keys" in capsys.readouterr().err and not out.exists()
