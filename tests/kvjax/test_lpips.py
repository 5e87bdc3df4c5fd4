"""LPIPS against the `lpips` package (tests/fixtures/lpips): the package's real v0.1 linear heads, random
VGG16 weights regenerated from their seed, converted by `python -m convert lpips` from both state-dict
forms, distances equal to the package's in float32."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import model_configs
from kvjax.checkpoints import flatten_state_dict, read_checkpoint
from kvjax.checkpoints.torch_zip_writer import write_torch_zip
from kvjax.conversion.lpips import convert_lpips
from kvjax.conversion.state_dict import ConversionError
from kvjax.conversion.store import load_converted
from kvjax.models.lpips import LPIPS, SCALE, SHIFT, vgg_feature_indices
from lpips_testing_utils import vgg_weights

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "lpips")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADS = os.path.join(FIXTURE, "vgg_heads.pth")
TOLERANCE = 1e-5  # relative, of the largest distance; the package's own fp32-vs-fp64 error is 4e-7


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("lpips")
  features = vgg_weights(0)
  backbone = {**features, "classifier.0.weight": np.zeros((4, 2), np.float32), "classifier.0.bias": np.zeros(4, np.float32)}
  write_torch_zip(root / "vgg16.pth", backbone)
  # A whole lpips.LPIPS(net='vgg') state dict: scaling buffers, net.slice{s}.{i}.*, lin{k}.model.1.weight.
  stage_of = {i: s for s, indices in enumerate(vgg_feature_indices(model_configs.LPIPS_VGG)) for i in indices}
  whole = {"scaling_layer": {"shift": np.asarray(SHIFT, np.float32).reshape(1, 3, 1, 1),
                             "scale": np.asarray(SCALE, np.float32).reshape(1, 3, 1, 1)}}
  for key, value in features.items():
    _, index, leaf = key.split(".")
    whole.setdefault("net", {}).setdefault(f"slice{stage_of[int(index)] + 1}", {}).setdefault(index, {})[leaf] = value
  heads = {k: v.numpy(np.float32) for k, v in flatten_state_dict(read_checkpoint(HEADS)).items()}
  for key, value in heads.items():
    lin, _, one, leaf = key.split(".")
    whole.setdefault(lin, {}).setdefault("model", {}).setdefault(one, {})[leaf] = value
  write_torch_zip(root / "whole.pth", whole)
  return root


@pytest.mark.parametrize("form", ["heads_and_vgg", "whole"])
def test_distances_equal_the_lpips_package(sources, form):
  if form == "whole":
    converted = convert_lpips(str(sources / "whole.pth"), model_configs.LPIPS_VGG)
  else:
    converted = convert_lpips(HEADS, model_configs.LPIPS_VGG, vgg=str(sources / "vgg16.pth"))
  cases = np.load(os.path.join(FIXTURE, "cases.npz"))
  model = LPIPS(model_configs.LPIPS_VGG)
  for name in ("square", "wide"):
    got = np.asarray(model.apply({"params": converted.params}, jnp.asarray(cases[f"{name}_x"]),
                                 jnp.asarray(cases[f"{name}_y"])))
    expected = cases[f"{name}_expected"]
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max(), (name, got, expected)
  assert np.all(np.diff(cases["square_expected"]) > 0)  # more noise, farther: the cases discriminate


def test_identical_images_are_at_distance_zero():
  from kvjax.params import random_params
  params = random_params(model_configs.LPIPS_TINY, 0)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  d = LPIPS(model_configs.LPIPS_TINY).apply({"params": params}, x, x)
  assert d.shape == (2,) and float(jnp.abs(d).max()) == 0


def test_bad_sources_are_named(sources, tmp_path):
  with pytest.raises(ConversionError, match=r"missing keys(.|\n)*net\.slice1\.0\.weight"):
    convert_lpips(HEADS, model_configs.LPIPS_VGG)  # the heads alone
  with pytest.raises(ConversionError, match="holds the VGG weights already"):
    convert_lpips(str(sources / "whole.pth"), model_configs.LPIPS_VGG, vgg=str(sources / "vgg16.pth"))
  write_torch_zip(tmp_path / "odd.pth", {**vgg_weights(0), "features.99.weight": np.zeros(3, np.float32)})
  with pytest.raises(ConversionError, match="features.99.weight"):
    convert_lpips(HEADS, model_configs.LPIPS_VGG, vgg=str(tmp_path / "odd.pth"))


def test_convert_lpips_command(sources, tmp_path):
  out = tmp_path / "lpips"
  done = subprocess.run([sys.executable, "-m", "convert", "lpips", HEADS, str(out), "--vgg", str(sources / "vgg16.pth")],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "14,716,160 parameters" in done.stdout
  model = load_converted(out)
  assert model.kind == "lpips" and model.config == model_configs.LPIPS_VGG
  bad = subprocess.run([sys.executable, "-m", "convert", "lpips", HEADS, str(tmp_path / "other")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "missing keys" in bad.stderr and not (tmp_path / "other").exists()
