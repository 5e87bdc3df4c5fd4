import dataclasses
import functools
import json
import os
import shutil

import flax.linen as nn
import flax.traverse_util
import jax
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file

from testing_utils import FIXTURES
from kvjax import model_configs
from kvjax.checkpoints import CheckpointError
from kvjax.conversion.state_dict import ConversionError
from kvjax.conversion.t5 import IGNORED_COUNT, convert_t5_encoder, hf_key
from kvjax.models.t5_encoder import T5Encoder, relative_position_buckets
from kvjax.params import abstract_params, count_params
from kvjax.parity import verify_fixture

CFG = model_configs.T5_ENCODER_TINY
FIXTURE = os.path.join(FIXTURES, "t5_encoder")
SAVE_MODES = {
    "safetensors": {},
    "safetensors_sharded": {"max_shard_size": "20KB"},
    "bin": {"safe_serialization": False},
    "bin_sharded": {"safe_serialization": False, "max_shard_size": "20KB"},
}


def _hf_model(cls, feed_forward_proj="gated-silu", seed=0):
  """A random tiny HF model at CFG whose position bias and norm weights are far from their init values."""
  torch.manual_seed(seed)
  fields = {**CFG.to_dict(), "feed_forward_proj": feed_forward_proj}
  model = cls(transformers.T5Config(**fields, dropout_rate=0.0)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)
      elif "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model


def _inputs():
  """Rows of 24 (relative distances beyond max_distance), 9 and 1 (EOS only) real tokens, padded with 0."""
  rng = np.random.default_rng(1)
  ids = np.zeros((3, 24), np.int32)
  mask = np.zeros((3, 24), np.int32)
  for row, n in enumerate((24, 9, 1)):
    ids[row, : n - 1] = rng.integers(3, CFG.vocab_size, n - 1)
    ids[row, n - 1] = 1
    mask[row, :n] = 1
  return ids, mask


def _reference(model, ids, mask):
  encoder = model.encoder if hasattr(model, "decoder") else model
  with torch.no_grad():
    out = encoder(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
  return out.last_hidden_state.float().numpy()


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _encode(params, ids, mask, config, dtype=jax.numpy.float32):
  return T5Encoder(config, dtype=dtype).apply({"params": params}, ids, mask)


def _rel_l2(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """An encoder-only and a whole encoder-decoder model, each saved in every HF layout."""
  root = tmp_path_factory.mktemp("t5")
  out = {}
  for cls in (transformers.T5EncoderModel, transformers.T5ForConditionalGeneration):
    model = _hf_model(cls)
    for mode, kwargs in SAVE_MODES.items():
      folder = root / f"{cls.__name__}_{mode}"
      model.save_pretrained(folder, **kwargs)
      out[cls.__name__, mode] = folder
    out[cls.__name__] = model
  return out


@pytest.mark.parametrize("mode", SAVE_MODES)
def test_encoder_checkpoints_match_transformers(saved, mode):
  converted = convert_t5_encoder(saved["T5EncoderModel", mode])
  assert converted.config == CFG and converted.extras == {}
  ids, mask = _inputs()
  reference = _reference(saved["T5EncoderModel"], ids, mask)
  assert _rel_l2(_encode(converted.params, ids, mask, CFG), reference) < 1e-5


@pytest.mark.parametrize("mode", ["safetensors", "bin_sharded"])
def test_whole_encoder_decoder_checkpoint_converts_its_encoder(saved, mode):
  folder = saved["T5ForConditionalGeneration", mode]
  converted = convert_t5_encoder(folder)
  # The skipped decoder and LM-head tensors are reported, not silently dropped.
  model = saved["T5ForConditionalGeneration"]
  keys = {k for k in model.state_dict() if k.startswith(("decoder.", "lm_head."))}
  # safetensors keeps one copy of tied tensors; torch.save stores every name.
  tied = {"decoder.embed_tokens.weight", "lm_head.weight"} if mode.startswith("safetensors") else set()
  stored = keys - tied
  assert int(converted.extras[IGNORED_COUNT]) == len(stored)
  ids, mask = _inputs()
  reference = _reference(saved["T5ForConditionalGeneration"], ids, mask)
  assert _rel_l2(_encode(converted.params, ids, mask, CFG), reference) < 1e-5


def test_gated_gelu_matches_transformers(tmp_path):
  model = _hf_model(transformers.T5EncoderModel, "gated-gelu", seed=3)
  model.save_pretrained(tmp_path)
  converted = convert_t5_encoder(tmp_path)
  assert converted.config.feed_forward_proj == "gated-gelu"
  ids, mask = _inputs()
  assert _rel_l2(_encode(converted.params, ids, mask, converted.config), _reference(model, ids, mask)) < 1e-5


def test_fixture_matches_the_reference():
  results = verify_fixture(os.path.join(FIXTURE, "manifest.json"))
  assert [r.name for r in results] == ["t5_encoder/padded_batch"]
  assert results[0].ok, results[0].line()


def test_half_precision_checkpoints_and_outputs(saved, tmp_path):
  """bf16 and fp16 safetensors and .bin files read exactly; a bf16 encoder stays close to the fp32 reference."""
  model = saved["T5EncoderModel"]
  for torch_dtype, safe in ((torch.bfloat16, True), (torch.bfloat16, False), (torch.float16, True),
                           (torch.float16, False)):
    folder = tmp_path / f"{torch_dtype}_{safe}"
    kwargs = {"safe_serialization": safe}
    _hf_model(transformers.T5EncoderModel).to(torch_dtype).save_pretrained(folder, **kwargs)
    flat = flax.traverse_util.flatten_dict(convert_t5_encoder(folder).params)
    for path, value in flat.items():
      want = model.state_dict()[hf_key(path)].to(torch_dtype).float().numpy()
      np.testing.assert_array_equal(value, want.T if path[-1] == "kernel" else want)
  converted = convert_t5_encoder(saved["T5EncoderModel", "safetensors"], dtype=ml_dtypes.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(converted.params)} == {np.dtype(ml_dtypes.bfloat16)}
  ids, mask = _inputs()
  got = _encode(converted.params, ids, mask, CFG, dtype=jax.numpy.bfloat16)
  assert got.dtype == jax.numpy.bfloat16 and _rel_l2(got, _reference(model, ids, mask)) < 3e-2


def test_relative_position_buckets_match_transformers():
  bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
  for num_buckets, max_distance in ((32, 128), (8, 20), (16, 100), (64, 256)):
    ours = relative_position_buckets(1, 6001, num_buckets, max_distance)[0]
    theirs = bucket(torch.arange(6001)[None, :] - 0, bidirectional=True, num_buckets=num_buckets,
                    max_distance=max_distance)[0].numpy()
    np.testing.assert_array_equal(ours, theirs)
    ours = relative_position_buckets(6001, 1, num_buckets, max_distance)[:, 0]
    theirs = bucket(-torch.arange(6001), bidirectional=True, num_buckets=num_buckets,
                    max_distance=max_distance).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_parameter_counts_and_logical_axes(saved):
  assert count_params(abstract_params(CFG)) == sum(p.numel() for p in saved["T5EncoderModel"].parameters())
  production = abstract_params(model_configs.FLAN_UL2_ENCODER)
  assert count_params(production) == 8_721_797_632
  assert count_params(production["shared"]) == 131_596_288
  assert count_params(production["encoder"]) == 8_590_201_344
  ids = jax.ShapeDtypeStruct((1, 128), np.int32)
  out = jax.eval_shape(T5Encoder(model_configs.FLAN_UL2_ENCODER).apply, {"params": production}, ids, ids)
  assert out.shape == (1, 128, 4096) and out.dtype == np.float32
  for path, leaf in flax.traverse_util.flatten_dict(abstract_params(CFG)).items():
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == len(leaf.value.shape), path


def test_hf_config_reading():
  flan_ul2 = dict(model_type="t5", vocab_size=32128, d_model=4096, d_kv=256, d_ff=16384, num_layers=32,
                  num_decoder_layers=32, num_heads=16, relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                  feed_forward_proj="gated-silu", is_gated_act=True, dense_act_fn="silu",
                  tie_word_embeddings=False)
  assert model_configs.T5EncoderConfig.from_hf_config(flan_ul2) == model_configs.FLAN_UL2_ENCODER
  older = {k: v for k, v in flan_ul2.items() if k != "relative_attention_max_distance"}
  assert model_configs.T5EncoderConfig.from_hf_config(older) == model_configs.FLAN_UL2_ENCODER
  refused = [({"feed_forward_proj": "relu"}, "relu"), ({"feed_forward_proj": "gated-relu"}, "gated-relu"),
             ({"is_gated_act": False}, "is_gated_act"), ({"model_type": "umt5"}, "umt5"),
             ({"d_ff": None}, "d_ff")]
  for change, match in refused:
    values = {k: v for k, v in {**flan_ul2, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=match):
      model_configs.T5EncoderConfig.from_hf_config(values)
  with pytest.raises(ValueError, match="feed_forward_proj"):
    model_configs.T5EncoderConfig(feed_forward_proj="relu")


def _copy_folder(saved, tmp_path, mode="safetensors"):
  folder = tmp_path / "t5"
  shutil.copytree(saved["T5EncoderModel", mode], folder)
  return folder


def test_missing_sources_are_errors(saved, tmp_path):
  with pytest.raises(CheckpointError, match="no such file or folder"):
    convert_t5_encoder(tmp_path / "absent", CFG)
  with pytest.raises(CheckpointError, match="no Hugging Face weights"):
    convert_t5_encoder(tmp_path, CFG)
  folder = _copy_folder(saved, tmp_path)
  os.remove(folder / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert_t5_encoder(folder)
  assert convert_t5_encoder(folder / "model.safetensors", CFG).config == CFG  # a single file with a config


def test_wrong_unexpected_and_misshaped_keys_are_named(saved, tmp_path):
  folder = _copy_folder(saved, tmp_path)
  state = load_file(folder / "model.safetensors")
  state["encoder.block.1.layer.1.DenseReluDense.wi.0.weight"] = state.pop(
      "encoder.block.1.layer.1.DenseReluDense.wi_0.weight")
  state["encoder.final_layer_norm.weight"] = np.ones(7, np.float32)
  state["pooler.weight"] = np.ones(3, np.float32)
  save_file(state, folder / "model.safetensors")
  with pytest.raises(ConversionError) as info:
    convert_t5_encoder(folder)
  message = str(info.value)
  assert "missing keys:\n  encoder.block.1.layer.1.DenseReluDense.wi_0.weight (48, 32)" in message
  assert "encoder.block.1.layer.1.DenseReluDense.wi.0.weight (48, 32)" in message
  assert "pooler.weight (3,)" in message
  assert "encoder.final_layer_norm.weight: checkpoint (7,), model expects (32,)" in message
  with pytest.raises(ConversionError, match="mis-shaped"):  # a config that does not fit the weights
    convert_t5_encoder(saved["T5EncoderModel", "safetensors"], dataclasses.replace(CFG, d_ff=64))


def test_untied_embedding_copies_must_agree(saved, tmp_path):
  folder = _copy_folder(saved, tmp_path)
  state = load_file(folder / "model.safetensors")
  state["encoder.embed_tokens.weight"] = state["shared.weight"].copy()
  save_file(state, folder / "model.safetensors")
  convert_t5_encoder(folder)
  state["encoder.embed_tokens.weight"][0, 0] += 1
  save_file(state, folder / "model.safetensors")
  with pytest.raises(ConversionError, match="differ"):
    convert_t5_encoder(folder)


def test_shard_index_must_agree_with_the_shards(saved, tmp_path):
  folder = _copy_folder(saved, tmp_path, "safetensors_sharded")
  index_path = folder / "model.safetensors.index.json"
  index = json.loads(index_path.read_text())
  key = "encoder.final_layer_norm.weight"
  del index["weight_map"][key]
  index_path.write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match=key):
    convert_t5_encoder(folder)
  index["weight_map"][key] = "../elsewhere.safetensors"
  index_path.write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match="plain file names"):
    convert_t5_encoder(folder)


def test_the_scanned_stack_equals_the_unrolled_one():
  # The pipeline runs blocks 1..N-1 as one nn.scan (compile time independent of depth) on stacked weights.
  from kvjax.models.t5_encoder import SCANNED_BLOCKS, scan_layout
  from kvjax.params import random_params
  cfg = dataclasses.replace(CFG, num_layers=4)
  params = random_params(cfg, 0)
  ids = np.array([[5, 9, 3, 1, 0, 0], [7, 1, 0, 0, 0, 0]])
  unrolled = T5Encoder(cfg).apply({"params": params}, ids, ids > 0)
  scanned_params = scan_layout(params, 4)
  assert sorted(scanned_params["encoder"]) == ["block_0", "final_layer_norm", SCANNED_BLOCKS]
  q = scanned_params["encoder"][SCANNED_BLOCKS]["layer_0"]["SelfAttention"]["q"]["kernel"]
  assert q.shape == (3, *params["encoder"]["block_1"]["layer_0"]["SelfAttention"]["q"]["kernel"].shape)
  scanned = T5Encoder(cfg, scan_layers=True).apply({"params": scanned_params}, ids, ids > 0)
  np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-5)
  # The scanned layout is the one its init makes, logical axes with a leading unsharded layer axis.
  boxed = jax.eval_shape(lambda: T5Encoder(cfg, scan_layers=True).init(jax.random.key(0), ids, ids > 0))["params"]
  assert jax.tree.structure(nn.unbox(boxed)) == jax.tree.structure(scanned_params)
  assert boxed["encoder"][SCANNED_BLOCKS]["layer_0"]["SelfAttention"]["q"]["kernel"].names == (None, "embed", "heads")
