"""Damaged or mixed-up converted folders are refused by the one loader (kvjax.conversion.store) before any stage
runs: one `error:` line naming the folder, the model and the first bad parameter, exit 2, no traceback, nothing
written. Each case breaks its own copy of the embedded demo's weights (small, float16)."""

import json
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from kvjax import demo
from kvjax.conversion.store import WeightsError, load_converted, save_converted
from sample.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def demo_weights():
  if not demo.installed():
    pytest.skip("the embedded demo weights are not installed")
  return demo.DEMO_WEIGHTS


@pytest.fixture
def weights(demo_weights, tmp_path):
  """A copy of the demo's weights folder to break."""
  return shutil.copytree(demo_weights, tmp_path / "weights")


def _edit_config(folder, edit):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    meta = json.load(f)
  edit(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def _data_files(state):
  return sorted((os.path.join(root, name) for root, _, names in os.walk(state) if os.path.basename(root) == "d"
                 for name in names), key=os.path.getsize)


def _changed_channels(weights):
  _edit_config(weights / "keyframe", lambda meta: meta["config"].update(model_channels=64))


def _no_manifest(weights):
  os.remove(weights / "interpolation" / "state" / "manifest.ocdbt")


def _truncated(weights):
  largest = _data_files(weights / "movq" / "state")[-1]
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


def _wrong_shape(weights):
  folder = weights / "projections"
  model = load_converted(folder)
  path, leaf = jax.tree_util.tree_leaves_with_path(model.params)[0]
  model.params = jax.tree_util.tree_map_with_path(lambda p, a: np.zeros((*a.shape[:-1], a.shape[-1] + 1), a.dtype)
                                                  if p == path else a, model.params)
  save_converted(model, folder, overwrite=True)


def _declared_bfloat16(weights):
  _edit_config(weights / "t5", lambda meta: meta.update(dtype="bfloat16"))


@pytest.mark.parametrize("breaks,extra,message", [
    (_changed_channels, [], "{w}/keyframe: keyframe_unet parameter "),
    (_no_manifest, [], "{w}/interpolation: damaged store: state/manifest.ocdbt is missing"),
    (None, ["--video-movq", "{w}/keyframe"], "--video-movq {w}/keyframe: a keyframe_unet folder, not a movq"),
    (None, ["--image-movq", "{w}/video_movq"], "--image-movq {w}/video_movq: this movq has another configuration"),
    (_truncated, [], "{w}/movq: damaged store: its movq arrays cannot be read"),
    (_wrong_shape, [], "{w}/projections: t5_projections parameter "),
    (_declared_bfloat16, [], "{w}/t5: t5_encoder parameter "),
])
def test_a_damaged_or_mixed_up_folder_is_refused_in_one_line(weights, tmp_path, capsys, breaks, extra, message):
  if breaks is not None:
    breaks(weights)
  out = tmp_path / "v.gif"
  code = main(["a fox", "--out", str(out), "--weights", str(weights), "--no-compile-cache",
               *[a.format(w=weights) for a in extra]])
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("error:") or "Traceback" in line]
  assert code == 2 and len(lines) == 1, err
  assert message.format(w=weights) in lines[0], err
  assert err.rstrip().splitlines()[-1] == lines[0]  # nothing after it
  assert not out.exists()


def test_the_shape_error_names_the_parameter_and_both_shapes(weights):
  _changed_channels(weights)
  with pytest.raises(WeightsError, match=r"parameter \S+ is stored as \(.*\), the configuration makes it \("):
    load_converted(weights / "keyframe")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_every_floating_dtype_a_folder_declares_loads(demo_weights, tmp_path, dtype):
  model = load_converted(os.path.join(demo_weights, "projections"))
  model.params = jax.tree.map(lambda a: np.asarray(a, jax.numpy.dtype(dtype)), model.params)
  save_converted(model, tmp_path / "p")
  loaded = load_converted(tmp_path / "p", "t5_projections", model.config, placement=None)
  assert {a.dtype.name for a in jax.tree.leaves(loaded.params)} == {dtype}


def test_a_store_that_fails_to_read_leaves_one_line_and_no_event_loop_noise(weights, tmp_path):
  """The arrays' read fails inside orbax (a data file gone, its space made up elsewhere): one line, and none of
  orbax's abandoned reads' tracebacks, up to the process's exit."""
  state = weights / "keyframe" / "state"
  files = _data_files(state)
  size = os.path.getsize(files[-1])
  os.remove(files[-1])
  with open(files[0], "ab") as f:
    f.write(b"\0" * size)
  out = tmp_path / "v.gif"
  run = subprocess.run([sys.executable, "-m", "sample", "a fox", "--out", str(out), "--weights", str(weights),
                        "--no-compile-cache"], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": REPO})
  assert run.returncode == 2, run.stderr
  assert run.stderr.rstrip().splitlines()[-1].startswith(f"error: {weights}/keyframe: damaged store: its "
                                                         "keyframe_unet arrays cannot be read"), run.stderr
  assert "Traceback" not in run.stderr and "Event loop is closed" not in run.stderr, run.stderr
  assert not out.exists()


def test_training_init_refuses_another_configuration_by_name(demo_weights):
  from kvjax.training.starting_weights import unet_start
  from kvjax.training.train_config import TRAIN_PRESETS
  with pytest.raises(WeightsError, match=r"--init .*/keyframe: this keyframe_unet has another configuration than "
                     r"the one it joins: "):
    unet_start(TRAIN_PRESETS["keyframe-tiny"], None, os.path.join(demo_weights, "keyframe"))
  with pytest.raises(WeightsError, match=r"--init .*/movq: a movq folder, not a keyframe_unet"):
    unet_start(TRAIN_PRESETS["keyframe-tiny"], None, os.path.join(demo_weights, "movq"))


def test_arrays_go_to_their_shards_as_they_are_read_and_init_takes_them_as_they_are(demo_weights, monkeypatch):
  """Training's --init on a mesh (8 simulated devices): orbax is asked for every parameter as a jax.Array on its
  train-state sharding, in float32 (no numpy tree read first), and the trainer starts from those arrays without a
  host round trip."""
  import dataclasses
  import orbax.checkpoint as ocp
  from kvjax.conversion import store
  from kvjax.params import abstract_params
  from kvjax.pipeline.pipeline_weights import PipelineWeights
  from kvjax.sharding import make_mesh, param_shardings
  from kvjax.training.starting_weights import unet_start
  from kvjax.training.train_config import TRAIN_PRESETS
  from kvjax.training.trainer import _Trainer
  config = dataclasses.replace(TRAIN_PRESETS["keyframe-tiny"], pipeline="demo")
  mesh = make_mesh("data=2,fsdp=2,tensor=2")
  wanted = param_shardings(abstract_params(config.model_config), mesh)
  asked = []
  real = store._restore_args
  monkeypatch.setattr(store, "_restore_args", lambda *a, **k: asked.append(real(*a, **k)) or asked[-1])
  weights = unet_start(config, PipelineWeights(*[None] * 8), os.path.join(demo_weights, "keyframe"), mesh)
  args = jax.tree.leaves(asked[0]["params"], is_leaf=lambda x: hasattr(x, "restore_type"))
  assert args and all(isinstance(a, ocp.ArrayRestoreArgs) and a.dtype == np.float32 for a in args)
  loaded = jax.tree.leaves(weights.keyframe)
  assert len(loaded) == len(jax.tree.leaves(wanted))
  for leaf, sharding in zip(loaded, jax.tree.leaves(wanted)):
    assert isinstance(leaf, jax.Array) and leaf.dtype == np.float32 and leaf.sharding == sharding
  placed = []
  real_put = jax.device_put
  monkeypatch.setattr(jax, "device_put", lambda tree, *a, **k: placed.append(tree) or real_put(tree, *a, **k))
  # The trainer's own init_state on a stand-in whose state is the parameters (the optimiser's compile left out).
  trainer = types.SimpleNamespace(_initial=abstract_params(config.model_config), mesh=mesh, _create=lambda p: p,
                                  shardings=wanted)
  _Trainer.init_state(trainer, weights.keyframe)
  assert all(a is b for a, b in zip(jax.tree.leaves(placed[0]), loaded))  # the loaded arrays themselves


def test_the_text_encoder_is_read_block_by_block_into_the_scanned_layout_on_its_shards(demo_weights):
  """What `python -m sample --weights --mesh` runs: the same arrays as the host copy stacked by scan_layout, each
  on the pipeline's sharding (its blocks' with a whole leading axis)."""
  from jax.sharding import NamedSharding, PartitionSpec
  from kvjax.conversion.store import check_converted
  from kvjax.models.t5_encoder import scan_layout
  from kvjax.params import abstract_params
  from kvjax.pipeline.pipeline_weights import _scanned_text_encoder
  from kvjax.sharding import make_mesh, param_shardings
  path = os.path.join(demo_weights, "t5")
  checked = check_converted(path)
  layers = checked.config.num_layers
  mesh = make_mesh("data=2,fsdp=2,tensor=2")
  placed = _scanned_text_encoder(checked, "", mesh)
  wanted = scan_layout(load_converted(path).params, layers)
  shardings = scan_layout(param_shardings(abstract_params(checked.config), mesh), layers,
                          lambda first, *rest: NamedSharding(mesh, PartitionSpec(None, *first.spec)))
  assert jax.tree.structure(placed) == jax.tree.structure(wanted)
  for leaf, expected, sharding in zip(jax.tree.leaves(placed), jax.tree.leaves(wanted), jax.tree.leaves(shardings)):
    assert isinstance(leaf, jax.Array) and leaf.sharding == sharding
    np.testing.assert_array_equal(np.asarray(leaf), expected)
