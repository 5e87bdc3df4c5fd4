"""LPIPS against the `lpips` package (0.1.4, net='vgg', v0.1) on the same random weights: the package's
network, its state dict saved with torch.save, converted by `kvjax.conversion.lpips` (both source forms),
distances equal in float32."""

import sys
import urllib.request
import warnings
from unittest import mock

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import configs
from kvjax.conversion.lpips import IGNORED_COUNT, convert_lpips
from kvjax.conversion.state_dict import ConversionError
from kvjax.models.lpips import LPIPS, vgg_feature_indices
from kvjax.params import abstract_params, count_params, random_params

VGG = configs.LPIPS_VGG
# Relative error of every distance. Measured: at most 1.3e-6 (absolute 3e-8), which is the package's own
# float32 error: against its float64 result the package is 1.3e-6 off, this model 3e-7.
TOLERANCE = 1e-5
# (batch, height, width): square, and non-square with odd sizes at the later stages (7x9 -> 3x4).
SHAPES = ((3, 64, 64), (2, 56, 72))
NOISE = (0.05, 0.3, 1.0)  # per pair: y = clip(x + noise * N(0, 1)), so the distances grow along the batch


def _import_lpips():
  """torch, torchvision and the `lpips` package.

  The torchvision wheel of the test extra (0.28.0, the PyPI build for CUDA torch) cannot load its C++ ops
  next to the CPU torch, which torchvision tolerates except for one unguarded
  `torch.library.register_fake("torchvision::nms")` at import. VGG16 is plain Python and uses none of the
  ops, so when that is the failure, the import is repeated with the fake-kernel registration skipped.
  """
  import torch
  try:
    import torchvision  # noqa: F401
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    with mock.patch.object(torch.library, "register_fake", lambda *args, **kwargs: lambda fn: fn):
      import torchvision  # noqa: F401
  import lpips
  import torchvision
  return torch, torchvision, lpips


def _no_downloads(*args, **kwargs):
  raise AssertionError(f"the reference tried to download {args[:1]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The package's LPIPS with random weights (heads non-negative, as trained ones) and its saved state dict."""
  torch, torchvision, lpips = _import_lpips()
  torch.manual_seed(0)  # torchvision's initialisation of the convolutions draws from the global generator
  with mock.patch.object(torch.hub, "download_url_to_file", _no_downloads), \
       mock.patch.object(urllib.request, "urlopen", _no_downloads), warnings.catch_warnings():
    # The package still calls torchvision's vgg16(pretrained=False), which torchvision takes as weights=None.
    warnings.filterwarnings("ignore", "The parameter 'pretrained'|Arguments other than a weight enum", UserWarning)
    model = lpips.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False).eval()
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for module in model.net.modules():
      if isinstance(module, torch.nn.Conv2d):  # torchvision's He init; biases too, to check their mapping
        module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=generator))
    for lin in model.lins:
      lin.model[1].weight.copy_(torch.rand(lin.model[1].weight.shape, generator=generator))
  root = tmp_path_factory.mktemp("lpips")
  torch.save(model.state_dict(), root / "lpips_vgg.pth")
  return dict(torch=torch, torchvision=torchvision, model=model, state=model.state_dict(), root=root)


@pytest.fixture(scope="module")
def converted(reference):
  return convert_lpips(str(reference["root"] / "lpips_vgg.pth"), VGG)


def _pairs(shape, seed):
  n, h, w = shape
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32)
  noise = np.asarray(NOISE[:n], np.float32).reshape(n, 1, 1, 1)
  y = np.clip(x + noise * rng.standard_normal(x.shape, np.float32), -1, 1)
  return x, y


def _package_distances(reference, x, y):
  torch = reference["torch"]
  with torch.no_grad():
    d = reference["model"](torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                           torch.from_numpy(y.transpose(0, 3, 1, 2).copy()))
  assert tuple(d.shape) == (x.shape[0], 1, 1, 1)
  return d.numpy().reshape(-1)


def test_distances_equal_the_lpips_package(reference, converted):
  assert converted.kind == "lpips" and converted.config == VGG and count_params(converted.params) == 14_716_160
  distance = jax.jit(LPIPS(VGG).apply)
  for seed, shape in enumerate(SHAPES):
    x, y = _pairs(shape, seed)
    expected = _package_distances(reference, x, y)
    got = np.asarray(distance({"params": converted.params}, x, y))
    assert got.shape == (shape[0],) and got.dtype == np.float32
    error = np.abs(got - expected)
    print(f"{shape}: max abs {error.max():.2e}, max rel {(error / expected).max():.2e}")
    assert np.all(error <= TOLERANCE * expected), (shape, got, expected)
    assert np.all(np.diff(expected) > 0)  # the pairs discriminate: more noise, farther


def test_bfloat16_compute_is_close(reference, converted):
  x, y = _pairs(SHAPES[0], 0)
  expected = _package_distances(reference, x, y)
  got = np.asarray(jax.jit(LPIPS(VGG, dtype=jnp.bfloat16).apply)({"params": converted.params}, x, y))
  assert got.dtype == np.float32
  print(f"bfloat16: max rel {(np.abs(got - expected) / expected).max():.2e}")
  np.testing.assert_allclose(got, expected, rtol=0.02)  # measured 4e-3


def test_heads_file_and_torchvision_vgg16_convert_to_the_same_parameters(reference, converted):
  torch, torchvision = reference["torch"], reference["torchvision"]
  root = reference["root"]
  # The package's vgg.pth layout (lin{k}.model.1.weight only) and torchvision's VGG16 state dict, classifier
  # included, holding the reference's convolutions.
  torch.save({k: v for k, v in reference["state"].items() if k.startswith("lin") and not k.startswith("lins.")},
             root / "heads.pth")
  vgg = torchvision.models.vgg16(weights=None)
  with torch.no_grad():
    for key, value in reference["state"].items():
      if key.startswith("net.slice"):
        index, leaf = key.split(".")[2:]
        getattr(vgg.features[int(index)], leaf).copy_(value)
  torch.save(vgg.state_dict(), root / "vgg16.pth")
  del vgg
  two_files = convert_lpips(str(root / "heads.pth"), VGG, vgg=str(root / "vgg16.pth"))
  assert int(two_files.extras[IGNORED_COUNT]) == 6  # classifier.{0,3,6}.{weight,bias}
  got = flax.traverse_util.flatten_dict(two_files.params)
  want = flax.traverse_util.flatten_dict(converted.params)
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(want[path]), err_msg="/".join(path))


def _save(reference, name, changes):
  """The reference state dict with `changes` (key -> tensor, or None to delete) saved as `name`."""
  state = dict(reference["state"])
  for key, value in changes.items():
    if value is None:
      del state[key]
    else:
      state[key] = value
  path = reference["root"] / name
  reference["torch"].save(state, path)
  return str(path)


def test_bad_sources_are_named(reference):
  torch, state = reference["torch"], reference["state"]
  renamed = _save(reference, "renamed.pth", {"net.slice3.12.weight": None,
                                             "net.slice3.13.weight": state["net.slice3.12.weight"],
                                             "net.slice1.0.bias": torch.zeros(63)})
  with pytest.raises(ConversionError) as error:
    convert_lpips(renamed, VGG)
  message = str(error.value)
  assert "1 missing keys:\n  net.slice3.12.weight (256, 256, 3, 3)" in message
  assert "1 unexpected keys:\n  net.slice3.13.weight (256, 256, 3, 3)" in message
  assert "1 mis-shaped keys:\n  net.slice1.0.bias: checkpoint (63,), model expects (64,)" in message
  heads = str(reference["root"] / "heads_only.pth")
  torch.save({k: v for k, v in state.items() if k.startswith("lin")}, heads)
  with pytest.raises(ConversionError, match=r"26 missing keys:\n  net\.slice1\.0\.bias \(64,\)"):
    convert_lpips(heads, VGG)  # the heads without --vgg
  with pytest.raises(ConversionError, match="holds the VGG weights already"):
    convert_lpips(str(reference["root"] / "lpips_vgg.pth"), VGG, vgg=heads)
  odd = str(reference["root"] / "odd_vgg.pth")
  torch.save({f"features.{k.split('.')[2]}.{k.split('.')[3]}": v for k, v in state.items() if k.startswith("net.")}
             | {"features.31.weight": torch.zeros(3)}, odd)
  with pytest.raises(ConversionError, match=r"1 unexpected keys:\n  .*odd_vgg\.pth: features\.31\.weight \(3,\)"):
    convert_lpips(heads, VGG, vgg=odd)
  aliased = _save(reference, "aliased.pth", {"lins.2.model.1.weight": state["lin2.model.1.weight"] + 1})
  with pytest.raises(ConversionError, match=r"lins\.2\.model\.1\.weight .* differs from lin2\.model\.1\.weight"):
    convert_lpips(aliased, VGG)
  signed = _save(reference, "signed.pth", {"lin4.model.1.weight": -state["lin4.model.1.weight"],
                                           "lins.4.model.1.weight": None})
  with pytest.raises(ConversionError, match="heads lin4 have negative weights"):
    convert_lpips(signed, VGG)
  scaled = _save(reference, "scaled.pth", {"scaling_layer.scale": torch.ones(1, 3, 1, 1)})
  with pytest.raises(ConversionError, match="scaling_layer.scale is"):
    convert_lpips(scaled, VGG)


def test_identical_images_are_at_distance_zero_and_dead_features_have_finite_gradients():
  tiny = configs.LPIPS_TINY
  params = random_params(tiny, 0)  # biases 0
  x, y = (jnp.asarray(a) for a in _pairs((2, 16, 16), 0))
  model = LPIPS(tiny)
  distance = jax.jit(model.apply)
  same = np.asarray(distance({"params": params}, x, x))
  assert same.shape == (2,) and np.abs(same).max() < 1e-12  # XLA may order one batch's two halves apart
  # A first bias far below zero makes every feature of every stage 0, where the norm has no derivative.
  dead = jax.tree.map(lambda a: a, params)
  dead["net"]["slice1_0"]["bias"] = jnp.full_like(params["net"]["slice1_0"]["bias"], -1e3)
  grad = jax.jit(jax.grad(lambda y: model.apply({"params": dead}, x, y).sum()))(y)
  assert bool(jnp.all(jnp.isfinite(grad)))
  with pytest.raises(ValueError, match="at least 16x16"):
    model.apply({"params": params}, x[:, :8], x[:, :8])


def test_parameters_have_logical_axes_and_presets():
  boxed = flax.traverse_util.flatten_dict(abstract_params(VGG))
  assert boxed[("net", "slice1_0", "kernel")].names == (None, None, "conv_in", "conv_out")
  assert boxed[("net", "slice1_0", "bias")].names == ("conv_out",)
  assert boxed[("lin0", "model_1", "kernel")].names == (None, None, "conv_in", None)
  assert vgg_feature_indices(VGG) == [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
  assert configs.PRESETS["lpips-vgg"] == VGG and configs.CONFIG_TYPES["lpips"] is configs.LPIPSConfig
  assert configs.LPIPSConfig.from_dict(VGG.to_dict()) == VGG
  with pytest.raises(ValueError, match="one per stage"):
    configs.LPIPSConfig(widths=(8, 16), convs_per_stage=(1,))
