"""Weight-only int8 (kvjax.quantization): the rounding error on a fixture's weights, the int8 forward against the
reference, int8 folders on disk and in a pipeline, shardings of int8 kernels."""

import json
import os

import flax.traverse_util
import jax
import numpy as np
import pytest

from testing_utils import FIXTURES
from kvjax import model_configs, quantization
from kvjax.conversion.registry import CONVERTERS
from kvjax.conversion.store import read_metadata, save_converted
from kvjax.parity import verify_fixture


def _converted(name):
  folder = os.path.join(FIXTURES, name)
  with open(os.path.join(folder, "manifest.json")) as f:
    manifest = json.load(f)
  config = model_configs.CONFIG_TYPES[manifest["model"]].from_dict(manifest["config"])
  return CONVERTERS[manifest["model"]](os.path.join(folder, manifest["checkpoint"]), config)


def test_quantize_dequantize_error_is_bounded_on_a_fixture(tmp_path):
  converted = _converted("keyframe_unet_small")
  quantized = quantization.quantize_params(converted.params, "keyframe_unet")
  floats = flax.traverse_util.flatten_dict(converted.params)
  flat = flax.traverse_util.flatten_dict(quantized)
  int8 = [path for path, leaf in flat.items() if quantization.is_int8(leaf)]
  assert len(int8) > 20 and all(path[-1] == "kernel" for path in int8)
  for path in int8:
    w, q = np.asarray(floats[path], np.float32), flat[path]
    assert q.values.dtype == np.int8 and q.values.shape == w.shape and q.scale.shape == (1,) * (w.ndim - 1) + w.shape[-1:]
    error = np.abs(np.asarray(q.dequantize()) - w)
    assert np.all(error <= q.scale / 2 * (1 + 1e-5))  # rounding: half a step of its channel
    assert np.linalg.norm(error) <= 0.02 * np.linalg.norm(w), path
  for path, leaf in flat.items():  # everything else kept: norms, biases, embeddings, the input and output layers
    if path not in int8:
      assert leaf is floats[path]
  assert not set(path[0] for path in int8) & {"in_layer", "image_in_layer", "out_layer_2"}
  assert quantization.quantize_params(quantized, "keyframe_unet") == quantized  # idempotent
  stored = quantization.to_stored(quantized)  # on disk: {"int8", "scale"} per kernel
  assert set(stored["in_layer"]) == {"kernel", "bias"} and set(stored["out_layer_0"]) == {"scale", "bias"}
  assert quantization.from_stored(stored) == quantized


def test_int8_forward_is_close_to_the_float32_reference():
  """T5 (a scanned-free forward, every projection but wo in int8) against the recorded float32 outputs, through
  a folder written in int8 and read back."""
  results = verify_fixture(os.path.join(FIXTURES, "t5_encoder", "manifest.json"), quantize=True)
  assert results and all(not r.error for r in results)
  assert all(r.rel_l2_error < 3e-2 for r in results), [r.line() for r in results]
  with pytest.raises(ValueError, match="not a t5_projections"):
    quantization.check_kind("t5_projections")


def test_parse_quantize():
  assert quantization.parse_quantize("int8") == dict.fromkeys(quantization.DEFAULT_MODELS, "int8")
  assert quantization.parse_quantize("t5=int8, video-movq=int8") == {"text_encoder": "int8", "video_movq": "int8"}
  for bad in ("int4", "t5=int4", "projections=int8", "t5=int8,t5=int8", "t5", ","):
    with pytest.raises(ValueError, match="--quantize"):
      quantization.parse_quantize(bad)


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory):
  """The tiny pipeline's random weights as `convert all --quantize int8` writes them (T5 and the UNets int8)."""
  from kvjax.conversion.store import ConvertedModel
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  from kvjax.pipeline.pipeline_weights import FOLDERS, quantize_weights, random_weights
  config = PIPELINE_PRESETS["tiny"]
  weights = quantize_weights(random_weights(config, 0), quantization.parse_quantize("int8"))
  out = tmp_path_factory.mktemp("int8") / "weights"
  for field, folder in FOLDERS.items():
    extras = {"null_embedding": np.asarray(getattr(weights, f"{field}_null"))} if field in ("keyframe", "interpolation") else {}
    model_config = getattr(config, field)
    save_converted(ConvertedModel(model_config.kind, model_config, getattr(weights, field), extras), out / folder)
  return str(out)


def test_a_converted_int8_folder_loads_on_a_mesh_sharded_as_float_and_encodes(int8_folder):
  """No --quantize: the folder's int8 kernels load as stored, each read straight into its float kernel's
  sharding (the rule table's); T5's stacked blocks keep their leading axis whole; the text stage runs."""
  from kvjax.params import abstract_params
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.pipeline.text_to_video import TextToVideo, weight_shardings
  from kvjax.sharding import make_mesh, param_shardings
  from kvjax.text.hashed_tokenizer import HashedWordTokenizer
  assert read_metadata(os.path.join(int8_folder, "keyframe"))["quantization"] == "int8"
  mesh = make_mesh("fsdp=2,tensor=2", jax.devices()[:4])
  config, weights = load_pipeline_weights(int8_folder, tokens_length=8, mesh=mesh)
  assert all(quantization.is_quantized(getattr(weights, f)) for f in quantization.DEFAULT_MODELS)
  assert not quantization.is_quantized(weights.video_movq)
  floats = flax.traverse_util.flatten_dict(param_shardings(abstract_params(config.keyframe), mesh))
  int8 = {path: leaf for path, leaf in flax.traverse_util.flatten_dict(weights.keyframe).items()
          if quantization.is_int8(leaf)}
  assert any("tensor" in floats[path].spec for path in int8) and any("fsdp" in floats[path].spec for path in int8)
  for path, leaf in int8.items():
    assert leaf.values.sharding.spec == floats[path].spec
    if floats[path].spec[-1] is not None:  # scales split over the output channels as the values are
      assert leaf.scale.sharding.spec[-1] == floats[path].spec[-1]
  stacked = weight_shardings(config, mesh, weights).text_encoder["encoder"]
  scanned = [s for s in jax.tree.leaves(stacked, is_leaf=quantization.is_int8) if quantization.is_int8(s)]
  assert scanned and all(s.values.spec[0] is None for s in scanned if len(s.values.spec) == 3)
  pipeline = TextToVideo(config, weights, HashedWordTokenizer(config.text_encoder.vocab_size, 8), mesh=mesh)
  (context, mask), *_ = pipeline.encode_text(["a red fox", "waves"])
  assert context.shape[:2] == (2, 8) and np.all(np.isfinite(np.asarray(context)))


@pytest.mark.slow  # the whole tiny pipeline's compile; the fast tests above load, shard and run T5 in int8
def test_a_converted_int8_folder_samples_with_offload(int8_folder):
  """The whole tiny pipeline samples from the int8 folder with --offload (weights in host memory, each stage's
  placed as it runs)."""
  from kvjax.pipeline.pipeline_config import GenerationOptions
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.text.hashed_tokenizer import HashedWordTokenizer
  config, weights = load_pipeline_weights(int8_folder, tokens_length=8, offload=True)
  pipeline = TextToVideo(config, weights, HashedWordTokenizer(config.text_encoder.vocab_size, 8), offload=True)
  video = pipeline(["a red fox"], GenerationOptions(width=32, height=32, key_frame_steps=1, base_frame_steps=1,
                                                    interpolation_steps=1, fps="low"))
  assert video.shape == (1, 12, 32, 32, 3) and video.dtype == np.uint8 and video.std() > 0
