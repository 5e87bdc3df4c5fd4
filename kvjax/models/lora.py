"""LoRA adapters of the UNets (keyframe and interpolation), through qwix's LoRA provider.

qwix (`qwix.LoraProvider`) intercepts the `dot_general` and `conv_general_dilated` of every Flax module whose
path matches a rule and adds `x @ A @ B * alpha / rank` to its output, creating the adapter parameters beside
the layer's own: `<module path>/kernel_lora_a` (the kernel's input axes, then the rank; for a convolution
its taps too) and `<module path>/kernel_lora_b` (rank, output channels). They inherit the kernel's logical
axis names (A: the input axis and None, B: None and the output axis), so the rule table of
`kvjax/sharding.py` places them like the rest. B starts at zero: a fresh adapter changes nothing, bit for bit.

Targets are named groups of module paths (`LORA_TARGETS`); the module paths mirror the reference's, so an
adapter's keys map onto the official PyTorch modules one to one (`kvjax.conversion.adapters`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from kvjax.quantization import is_int8, quantize_array

# Module-path regexes (qwix matches the whole path, e.g. down_samples_1/resnet_attn_blocks_0_1/attention/to_query).
_PROJECTIONS = r"(to_query|to_key|to_value|output_layer)"
LORA_TARGETS = {
    # The spatial self-attention of each level (both UNets).
    "self_attention": rf"(.*/)?self_attention_block/attention/{_PROJECTIONS}",
    # Attention from every position to the text: q, k, v and the output layer (both UNets).
    "cross_attention": rf"(.*/)?resnet_attn_blocks_\d+_1/attention/{_PROJECTIONS}",
    # The 1x1-convolution feed-forwards after the spatial attentions.
    "feed_forward": r"(.*/)?(self_attention_block|resnet_attn_blocks_\d+_1)/feed_forward_[02]",
    # Temporal attention (its projections and feed-forward) and the temporal convolutions: the keyframe UNet's
    # temporal ResNets, the interpolation UNet's blended (3, 1, 1) convolutions.
    "temporal": (rf"(.*/)?temporal_attention_block/((temporal_)?attention/{_PROJECTIONS}|feed_forward_[02])"
                 r"|(.*/)?temporal_resnet_blocks_\d+_2|(.*/)?temporal_projection_new/temporal_projection"),
    # The spatial ResNets' convolutions (every Block's projection and the shortcuts' 1x1).
    "convolutions": r"(.*/)?resnet_blocks_\d+/projection|(.*/)?shortcut_projection",
}
DEFAULT_TARGETS = ("self_attention", "cross_attention")
INITS = ("kaiming", "gaussian")
BASE_DTYPES = ("float32", "bfloat16")
ADAPTER_LEAVES = ("kernel_lora_a", "kernel_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """A LoRA run's adapters (TrainConfig.lora; `--lora-rank`, `--lora-targets`, `--set lora.NAME=VALUE`)."""

  rank: int = 0  # 0: no adapters (the preset's own recipe trains)
  alpha: float = 0.0  # the adapters' output is scaled by alpha / rank; 0 means alpha = rank (scale 1)
  targets: tuple[str, ...] = DEFAULT_TARGETS  # groups of LORA_TARGETS
  dropout: float = 0.0  # dropout on the adapters' input while training
  # A's initialisation: "kaiming" (PEFT's default: uniform with bound 1/sqrt(fan_in)) or "gaussian" (normal
  # with standard deviation 1/rank); B starts at zero either way.
  init: str = "kaiming"
  base_dtype: str = "float32"  # the frozen base weights on the devices; bfloat16 halves their memory
  # Words that call up what the adapter learned: the k-th is read as the sentinel <extra_id_k> in training and
  # wherever the adapter is loaded (kvjax.text.tokenizer.trigger_tokens; the file's metadata records both).
  trigger_words: tuple[str, ...] = ()

  def __post_init__(self):
    if self.rank < 0 or self.alpha < 0:
      raise ValueError(f"LoraConfig: rank and alpha must be >= 0, got rank {self.rank}, alpha {self.alpha}")
    unknown = [t for t in self.targets if t not in LORA_TARGETS]
    if unknown or not self.targets:
      raise ValueError(f"LoraConfig.targets {','.join(self.targets) or '(none)'}: give one or more of "
                       f"{', '.join(LORA_TARGETS)}")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout}")
    from kvjax.text.tokenizer import trigger_tokens
    trigger_tokens(self.trigger_words)  # one word each, none twice (ValueError)
    if self.init not in INITS or self.base_dtype not in BASE_DTYPES:
      raise ValueError(f"LoraConfig: init must be one of {', '.join(INITS)} (got {self.init!r}), base_dtype one "
                       f"of {', '.join(BASE_DTYPES)} (got {self.base_dtype!r})")

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    """alpha / rank, what the adapters' output is multiplied by."""
    return (self.alpha or self.rank) / self.rank


def target_pattern(targets) -> str:
  return "|".join(f"(?:{LORA_TARGETS[t]})" for t in targets)


def with_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
  """`model` with adapters on `config.targets` (a qwix-wrapped module: same call, adapter parameters added)."""
  import qwix
  provider = qwix.LoraProvider(module_path=target_pattern(config.targets), rank=config.rank,
                               alpha=config.scale * config.rank, dropout=config.dropout)
  return qwix.apply_lora_to_model(model, provider)


def is_adapter(path) -> bool:
  return path[-1] in ADAPTER_LEAVES


@functools.lru_cache(maxsize=16)
def abstract_adapters(unet_config, config: LoraConfig) -> dict[str, Any]:
  """The adapter parameters of a UNet (boxed with their logical axes; shapes and dtypes only, float32)."""
  from kvjax.params import build_model, example_inputs
  if (config.dropout, config.init, config.base_dtype, config.trigger_words) != (0.0, "kaiming", "float32", ()):
    # the shapes depend on the rank and the targets alone: one trace for every other setting
    return abstract_adapters(unet_config, LoraConfig(rank=config.rank, alpha=config.alpha, targets=config.targets))
  model = with_lora(build_model(unet_config), config)
  boxed = jax.eval_shape(lambda rng, inputs: model.init(rng, **inputs)["params"], jax.random.key(0),
                         example_inputs(unet_config))
  flat = flax.traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
  return flax.traverse_util.unflatten_dict({path: leaf for path, leaf in flat.items() if is_adapter(path)})


def init_adapters(abstract, config: LoraConfig, seed: int = 0) -> dict[str, Any]:
  """Initial adapters (float32 numpy) for the shapes of `abstract` (`abstract_adapters`): A drawn as
  `config.init` says, B zero. Drawn with numpy, one generator in path order (no compile per shape)."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(nn.unbox(abstract))

  def draw(path, leaf):
    if path[-1] == "kernel_lora_b":
      return np.zeros(leaf.shape, np.float32)
    if config.init == "gaussian":
      return (rng.standard_normal(leaf.shape, np.float32) / np.float32(config.rank)).astype(np.float32)
    bound = 1 / math.sqrt(math.prod(leaf.shape[:-1]))
    return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)

  return flax.traverse_util.unflatten_dict({path: draw(path, leaf) for path, leaf in sorted(flat.items())})


def join(base, adapters) -> dict[str, Any]:
  """One parameter tree of the wrapped model from the base UNet's and the adapters'."""
  return flax.traverse_util.unflatten_dict({**flax.traverse_util.flatten_dict(base),
                                            **flax.traverse_util.flatten_dict(adapters)})


def adapter_modules(adapters) -> dict[tuple[str, ...], tuple[Any, Any]]:
  """{module path: (A, B)} of an adapter tree."""
  flat = flax.traverse_util.flatten_dict(adapters)
  return {path[:-1]: (flat[path], flat[path[:-1] + ("kernel_lora_b",)])
          for path in flat if path[-1] == "kernel_lora_a"}


def merge(base, adapters, scale: float, xp=np) -> dict[str, Any]:
  """`base` (a UNet's parameters) with each adapted kernel replaced by kernel + scale x A @ B, added in float32
  and cast back to the kernel's type; `scale` is the adapter's alpha / rank times the user's strength. Other
  leaves are `base`'s own (not copied). `xp`: numpy (host arrays) or jax.numpy (inside a jit; `scale` may be
  traced)."""
  flat = flax.traverse_util.flatten_dict(base)
  for module, (a, b) in adapter_modules(adapters).items():
    kernel = flat[module + ("kernel",)]
    change = xp.asarray(scale, xp.float32) * xp.tensordot(xp.asarray(a, xp.float32), xp.asarray(b, xp.float32),
                                                          axes=1)
    if is_int8(kernel) and xp is np:  # an int8 UNet (kvjax.quantization): merged in float32, quantized again
      flat[module + ("kernel",)] = quantize_array(np.asarray(kernel.dequantize(np.float32)) + np.asarray(change))
      continue
    if is_int8(kernel):  # inside a compiled stage: the adapted kernel is float32 while the stage runs
      flat[module + ("kernel",)] = kernel.dequantize(xp.float32) + change
      continue
    flat[module + ("kernel",)] = (xp.asarray(kernel, xp.float32) + change).astype(kernel.dtype)
  return flax.traverse_util.unflatten_dict(flat)


@flax.struct.dataclass
class RuntimeAdapters:
  """A UNet's parameters with LoRA adapters applied at run time: the pipeline's compiled stages take this tree
  as the UNet's weights and merge it inside the program, once per stage call, before the denoising loop
  (`params_of`): each adapted kernel becomes kernel + strength x alpha / rank x A @ B. The strengths (and
  alpha / rank) are traced float32 scalars, so a new strength, or another adapter of the same rank and
  targets, reuses the compiled stages; the merged copies of the adapted kernels live while the stage runs.
  Made by `kvjax.pipeline.pipeline_weights.with_adapters(..., mode="runtime")`."""

  base: Any  # the UNet's parameters (float, or with int8 kernels: those adapted are float32 while merged)
  adapters: tuple  # one adapter tree per adapter (`<module path>/kernel_lora_a`, `kernel_lora_b`), in order
  factors: tuple  # alpha / rank of each adapter (float32 scalars)
  strengths: tuple  # the user's scale of each adapter (float32 scalars)
  # LoraConfig(rank, targets) of each adapter: its shapes and logical axes (static: part of the compile key).
  configs: tuple = flax.struct.field(pytree_node=False, default=())

  def merged(self, xp=jnp) -> dict[str, Any]:
    """The base with every adapter merged in order (the same arithmetic as merging at load)."""
    params = self.base
    for adapters, factor, strength in zip(self.adapters, self.factors, self.strengths):
      params = merge(params, adapters, xp.asarray(factor, xp.float32) * xp.asarray(strength, xp.float32), xp)
    return params


def params_of(params) -> Any:
  """A UNet's weights as its modules read them: a RuntimeAdapters merged (call inside the compiled stage),
  anything else as it is."""
  return params.merged() if isinstance(params, RuntimeAdapters) else params


def check_target_names(names) -> tuple[str, ...]:
  """Comma-separated group names (`--lora-targets`) -> a tuple, each a LORA_TARGETS key."""
  targets = tuple(t.strip() for t in (names.split(",") if isinstance(names, str) else names) if t.strip())
  bad = [t for t in targets if t not in LORA_TARGETS]
  if bad or not targets:
    raise ValueError(f"no LoRA target group {', '.join(bad) or '(none)'}; choose from {', '.join(LORA_TARGETS)}")
  return targets
