"""LoRA adapters (kvjax.models.lora, kvjax.conversion.adapters): a fresh adapter leaves both UNets' outputs bit
for bit as they were; weights merged with an adapter give the adapted forward; adapter files round-trip,
merge through the pipeline's API (scale 0: the base weights themselves) and refuse what does not fit, by name."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.checkpoints.safetensors_file import read_safetensors_with_metadata, write_safetensors
from kvjax.conversion.adapters import AdapterError, check_base, read_adapter, write_adapter
from kvjax.models.lora import LORA_TARGETS, LoraConfig, abstract_adapters, init_adapters, join, merge, with_lora
from kvjax.params import build_model, random_params
from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS

PIPELINE = PIPELINE_PRESETS["tiny-two-level"]
LORA = LoraConfig(rank=2, alpha=4.0, targets=tuple(LORA_TARGETS))  # every group, the convolutions too


def _inputs(config, kind):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 8, 8, config.num_channels)).astype(np.float32)
  context = rng.standard_normal((4, 3, config.context_dim)).astype(np.float32)
  common = dict(x=x, time=np.array([10.0, 500.0, 900.0, 999.0], np.float32), context=context,
                context_mask=np.array([[True, True, False]] * 4))
  if kind == "keyframe":
    return dict(common, frame_index=np.tile(np.arange(2.0, dtype=np.float32), 2), num_frames=2,
                input_layer="video")
  return dict(common, num_groups=2)


# The interpolation UNet's two compiles are slow-marked: the keyframe UNet's share every kind of adapted layer
# (dense, 1x1, 3x3 and temporal convolutions); the interpolation UNet adds only its blended temporal ones.
@pytest.fixture(scope="module", params=["keyframe", pytest.param("interpolation", marks=pytest.mark.slow)])
def unet(request):
  config = getattr(PIPELINE, request.param)
  inputs = _inputs(config, request.param)
  static = {k: v for k, v in inputs.items() if isinstance(v, (int, str))}
  arrays = {k: v for k, v in inputs.items() if k not in static}
  model, adapted_model = build_model(config), with_lora(build_model(config), LORA)
  plain = jax.jit(lambda p: model.apply({"params": p}, **arrays, **static))
  adapted = jax.jit(lambda p, a: adapted_model.apply({"params": join(p, a)}, **arrays, **static))
  return config, random_params(config, seed=3), plain, adapted


def _trained(config, seed=1):
  """Adapters as after training: A and B both non-zero."""
  rng = np.random.default_rng(seed)
  fresh = init_adapters(abstract_adapters(config, LORA), LORA, seed=seed)
  return jax.tree.map(lambda x: x if x.any() else 0.1 * rng.standard_normal(x.shape).astype(np.float32), fresh)


def test_a_fresh_adapter_is_the_base_model_bit_for_bit(unet):
  config, base, plain, adapted = unet
  fresh = init_adapters(abstract_adapters(config, LORA), LORA, seed=0)
  modules = {path[-2] for path in flax.traverse_util.flatten_dict(fresh)}
  assert {"to_query", "to_value", "output_layer", "feed_forward_2", "projection"} <= modules
  np.testing.assert_array_equal(np.asarray(adapted(base, fresh)), np.asarray(plain(base)))


def test_merged_weights_give_the_adapted_forward(unet):
  config, base, plain, adapted = unet
  trained = _trained(config)
  merged = merge(base, trained, LORA.scale)
  expected = np.asarray(adapted(base, trained))
  np.testing.assert_allclose(np.asarray(plain(merged)), expected, rtol=1e-4, atol=1e-4)
  assert np.abs(expected - np.asarray(plain(base))).max() > 1e-2  # the adapter does change the output


def test_adapter_files_round_trip_and_merge_through_the_pipeline_api(tmp_path):
  from kvjax.pipeline.pipeline_weights import PipelineWeights, with_adapters
  config = PIPELINE.keyframe
  trained, base = _trained(config), random_params(config, seed=3)
  path = str(tmp_path / "style.safetensors")
  write_adapter(path, trained, unet_config=config, lora=LORA, pipeline="tiny-two-level", step=7)
  tensors, meta = read_safetensors_with_metadata(path)
  key = "down_samples.1.resnet_attn_blocks.0.1.attention.to_query"  # the reference's module path, PEFT's suffixes
  assert tensors[f"{key}.lora_A.weight"].shape == (2, 32) and tensors[f"{key}.lora_B.weight"].shape == (32, 2)
  conv = "down_samples.0.resnet_attn_blocks.0.0.resnet_blocks.1.projection"  # a 3x3 conv: PEFT's Conv layouts
  assert tensors[f"{conv}.lora_A.weight"].shape[:1] + tensors[f"{conv}.lora_A.weight"].shape[2:] == (2, 3, 3)
  assert tensors[f"{conv}.lora_B.weight"].shape[1:] == (2, 1, 1)
  assert meta["base_kind"] == "keyframe_unet" and meta["rank"] == "2" and meta["step"] == "7"
  adapter = read_adapter(path)
  assert adapter.scale == 2.0 and adapter.targets == LORA.targets
  for a, b in zip(jax.tree.leaves(adapter.adapters), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(a, b)
  weights = PipelineWeights(keyframe=base, keyframe_null=None, interpolation=None, interpolation_null=None,
                            image_movq=None, video_movq=None, text_encoder=None, projections=None)
  unchanged = with_adapters(PIPELINE, weights, [(path, 0.0)]).keyframe
  for a, b in zip(jax.tree.leaves(unchanged), jax.tree.leaves(base)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  halves = with_adapters(PIPELINE, weights, [(path, 0.5), (adapter, 0.5)]).keyframe
  for a, b in zip(jax.tree.leaves(halves), jax.tree.leaves(merge(base, trained, LORA.scale))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # another base, an unknown key, a tensor of another shape, a missing one, no metadata: refused by name
  with pytest.raises(AdapterError, match="made for a keyframe_unet of another configuration than this pipeline's: "):
    check_base(adapter, PIPELINE_PRESETS["tiny"].keyframe)
  with pytest.raises(AdapterError, match="an adapter of the keyframe_unet, not of the interpolation_unet"):
    check_base(adapter, PIPELINE.interpolation)
  arrays = {name: t.numpy() for name, t in tensors.items()}
  for change, message in (({"up_samples_0.to_query.lora_A.weight": np.zeros((2, 32), np.float32)},
                           "unknown key up_samples_0.to_query.lora_A.weight"),
                          ({f"{key}.lora_A.weight": np.zeros((3, 32), np.float32)},
                           f"{key}.lora_A.weight has shape (3, 32), its base makes it (2, 32)")):
    write_safetensors(str(tmp_path / "bad.safetensors"), {**arrays, **change}, meta, overwrite=True)
    with pytest.raises(AdapterError, match=message.replace("(", r"\(").replace(")", r"\)")):
      read_adapter(str(tmp_path / "bad.safetensors"))
  write_safetensors(str(tmp_path / "bad.safetensors"), {k: v for k, v in arrays.items() if k != f"{key}.lora_B.weight"},
                    meta, overwrite=True)
  with pytest.raises(AdapterError, match=f"missing key {key}.lora_B.weight"):
    read_adapter(str(tmp_path / "bad.safetensors"))
  write_safetensors(str(tmp_path / "bad.safetensors"), arrays, {"format": "other"}, overwrite=True)
  with pytest.raises(AdapterError, match="not a kvjax LoRA adapter"):
    read_adapter(str(tmp_path / "bad.safetensors"))


def test_trigger_words_travel_with_the_adapter_and_conflicts_are_refused(tmp_path):
  """The file records the sentinel each trigger word is read as (kvjax.text.tokenizer.trigger_tokens); two
  adapters that read one word, or one sentinel, two ways are refused by name, and so is a file whose record
  is not the rule's."""
  import dataclasses
  import json
  from kvjax.conversion.adapters import adapter_words
  config = PIPELINE.keyframe
  trained = _trained(config)
  paths = {}
  for name, words in (("huge", ("huge",)), ("both", ("huge", "zigzag")), ("other", ("zigzag",))):
    paths[name] = str(tmp_path / f"{name}.safetensors")
    write_adapter(paths[name], trained, unet_config=config, lora=dataclasses.replace(LORA, trigger_words=words),
                  pipeline="tiny-two-level", step=1)
  huge, both, other = (read_adapter(paths[n]) for n in ("huge", "both", "other"))
  assert huge.trigger_words == ("huge",) and huge.trigger_tokens == {"huge": "<extra_id_0>"}
  assert adapter_words([huge, both]) == {"huge": "<extra_id_0>", "zigzag": "<extra_id_1>"}
  with pytest.raises(AdapterError, match=r"trigger word 'zigzag' is read as <extra_id_0>, which an adapter before "
                                         r"it reads as 'huge'; load one of them"):
    adapter_words([huge, other])
  with pytest.raises(AdapterError, match="trigger word 'zigzag' is read as <extra_id_0>, and as <extra_id_1>"):
    adapter_words([both, other])
  tensors, meta = read_safetensors_with_metadata(paths["huge"])
  write_safetensors(str(tmp_path / "bad.safetensors"), {k: t.numpy() for k, t in tensors.items()},
                    {**meta, "trigger_tokens": json.dumps({"huge": "<extra_id_5>"})})
  with pytest.raises(AdapterError, match="bad metadata: trigger_tokens"):
    read_adapter(str(tmp_path / "bad.safetensors"))
  with pytest.raises(ValueError, match="trigger word 'two words'"):
    LoraConfig(rank=2, trigger_words=("two words",))


def test_a_frozen_base_on_the_devices_is_cast_there_and_never_crosses_to_the_host():
  # What a LoRA run with --init on a mesh gives the trainer: the float32 UNet already on its shards.
  from kvjax.params import abstract_params
  from kvjax.sharding import make_mesh, param_shardings
  from kvjax.training.trainer import frozen_base
  config = PIPELINE.keyframe
  part = lambda tree: {"down_samples_1": tree["down_samples_1"]}  # one level of the UNet: a short compile
  shardings = part(param_shardings(abstract_params(config), make_mesh("fsdp=2,tensor=2", jax.devices()[:4])))
  host = part(random_params(config, seed=3))
  placed = jax.device_put(host, shardings)
  with jax.transfer_guard_device_to_host("disallow"):
    base = frozen_base(placed, shardings, jnp.bfloat16)
  for leaf, before, sharding in zip(jax.tree.leaves(base), jax.tree.leaves(host), jax.tree.leaves(shardings)):
    assert leaf.dtype == jnp.bfloat16 and leaf.sharding == sharding
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(before).astype(jnp.bfloat16))
