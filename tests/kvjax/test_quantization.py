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
  converted = _converted("keyframe_unet")  # the tiny pipeline's keyframe config, traced once for both tests
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
  assert quantization.parse_quantize("t5=int8-all,keyframe=int8") == {"text_encoder": "int8-all", "keyframe": "int8"}
  for bad in ("int4", "t5=int4", "projections=int8", "t5=int8,t5=int8", "t5", ",", "t5=int8-al",
              "t5=int8,t5=int8-all", "t5=all"):
    with pytest.raises(ValueError, match="--quantize"):
      quantization.parse_quantize(bad)


def test_int8_all_puts_the_kept_layers_in_int8_too():
  """`--quantize t5=int8-all`: T5's wo kernels in int8 as well, every other kernel as int8 has it (no compile)."""
  params = _converted("t5_encoder").params
  int8 = lambda how: {path for path, leaf in flax.traverse_util.flatten_dict(quantization.quantize_params(
      params, "t5_encoder", quantization.kept_float(how, "t5_encoder"))).items() if quantization.is_int8(leaf)}
  wo = {path for path in flax.traverse_util.flatten_dict(params) if "wo" in path and path[-1] == "kernel"}
  assert wo and not wo & int8("int8")
  assert int8("int8-all") == int8("int8") | wo


def test_int8_kernels_shard_as_their_float_kernels():
  """Each int8 kernel takes its float kernel's sharding under the rule table, its scales split over the output
  channels alike (abstract weights: nothing is placed; the slow test below loads a folder on a mesh)."""
  from kvjax.params import abstract_params
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  from kvjax.sharding import make_mesh, param_shardings
  config = PIPELINE_PRESETS["tiny"]
  mesh = make_mesh("fsdp=2,tensor=2", jax.devices()[:4])
  floats = flax.traverse_util.flatten_dict(param_shardings(abstract_params(config.keyframe), mesh))
  quantized = quantization.quantized_abstract(config.keyframe, "keyframe_unet")
  int8 = {path: leaf for path, leaf in flax.traverse_util.flatten_dict(param_shardings(quantized, mesh)).items()
          if quantization.is_int8(leaf)}
  assert any("tensor" in floats[path].spec for path in int8) and any("fsdp" in floats[path].spec for path in int8)
  for path, leaf in int8.items():
    assert leaf.values.spec == floats[path].spec
    if floats[path].spec[-1] is not None:
      assert leaf.scale.spec[-1] == floats[path].spec[-1]


@pytest.mark.slow  # the tiny pipeline's random weights, six orbax folders and the whole pipeline's compile
def test_a_converted_int8_folder_loads_on_a_mesh_and_samples_with_offload(tmp_path):
  """The tiny pipeline's random weights as `convert all --quantize int8` writes them: with no --quantize the
  int8 kernels load as stored, on a mesh each straight into its float kernel's sharding (T5 block by block into
  its scanned layout, as `python -m sample` reads it; the text stage runs there), and the whole pipeline samples with --offload (weights in host memory, each stage's placed)."""
  from kvjax.conversion.store import ConvertedModel
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, GenerationOptions
  from kvjax.pipeline.pipeline_weights import FOLDERS, load_pipeline_weights, quantize_weights, random_weights
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.sharding import make_mesh
  from kvjax.text.hashed_tokenizer import HashedWordTokenizer
  config = PIPELINE_PRESETS["tiny"]
  weights = quantize_weights(random_weights(config, 0), quantization.parse_quantize("int8"))
  for field, folder in FOLDERS.items():
    extras = {"null_embedding": np.asarray(getattr(weights, f"{field}_null"))} if field in ("keyframe", "interpolation") else {}
    model_config = getattr(config, field)
    save_converted(ConvertedModel(model_config.kind, model_config, getattr(weights, field), extras), tmp_path / folder)
  assert read_metadata(tmp_path / "keyframe")["quantization"] == "int8"
  tokenizer = HashedWordTokenizer(config.text_encoder.vocab_size, 8)
  mesh = make_mesh("fsdp=2,tensor=2", jax.devices()[:4])
  config, weights = load_pipeline_weights(str(tmp_path), tokens_length=8, mesh=mesh, scan_text_encoder=True)
  assert all(quantization.is_quantized(getattr(weights, f)) for f in quantization.DEFAULT_MODELS)
  kernel = next(leaf for leaf in jax.tree.leaves(weights.keyframe, is_leaf=quantization.is_int8)
                if quantization.is_int8(leaf) and "tensor" in leaf.values.sharding.spec)
  assert kernel.values.dtype == np.int8
  (context, _), *_ = TextToVideo(config, weights, tokenizer, mesh=mesh).encode_text(["a red fox", "waves"])
  assert context.shape[:2] == (2, 8) and np.all(np.isfinite(np.asarray(context)))
  config, weights = load_pipeline_weights(str(tmp_path), tokens_length=8, offload=True)
  pipeline = TextToVideo(config, weights, tokenizer, offload=True)
  video = pipeline(["a red fox"], GenerationOptions(width=32, height=32, key_frame_steps=1, base_frame_steps=1,
                                                    interpolation_steps=1, fps="low"))
  assert video.shape == (1, 12, 32, 32, 3) and video.dtype == np.uint8 and video.std() > 0
