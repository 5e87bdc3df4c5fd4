"""LoRA adapter files: one safetensors file per adapter, PEFT-style keys under the reference's module paths.

Keys: `<reference module path>.lora_A.weight` and `.lora_B.weight`, the module path being the official PyTorch
module's (`kvjax.conversion.naming.torch_key`: `down_samples.1.resnet_attn_blocks.0.1.attention.to_query`), in
PEFT's layouts: a Linear's A (rank, in) and B (out, rank); a Conv's A (rank, in, *taps) and B (out, rank,
1, ...). The tensors are float32. `__metadata__` (strings): format "kvjax-lora", base_kind (keyframe_unet or
interpolation_unet), base_config (the UNet's configuration, JSON), base_pipeline (the run's pipeline preset),
rank, alpha (the output is scaled by alpha / rank), targets (groups of kvjax.models.lora.LORA_TARGETS),
trigger_words (comma-separated), trigger_tokens (JSON: the sentinel each trigger word is read as,
kvjax.text.tokenizer.trigger_tokens; absent in older files, whose words then read as the vocabulary reads
them), step.

Reading goes through the project's bounded safetensors reader (kvjax.checkpoints.safetensors_file); a file for
another base, an unknown key, a missing one or a tensor of another shape is refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import flax.traverse_util
import numpy as np

from kvjax import model_configs
from kvjax.checkpoints.lazy import CheckpointError
from kvjax.checkpoints.safetensors_file import read_safetensors_with_metadata, write_safetensors
from kvjax.conversion.naming import torch_key
from kvjax.models.lora import LORA_TARGETS, LoraConfig, abstract_adapters, adapter_modules
from kvjax.text.tokenizer import trigger_tokens

FORMAT = "kvjax-lora"
UNET_KINDS = ("keyframe_unet", "interpolation_unet")
MAX_ADAPTER_BYTES = 4 * 2**30  # far above any rank a UNet adapter uses; a file beyond it is not read


class AdapterError(ValueError):
  """An adapter file that cannot be used where it is given: one line naming the file and the problem."""


def peft_module(module_path: tuple[str, ...]) -> str:
  """A Flax module path -> the reference's PyTorch module path (the key without `.lora_A.weight`)."""
  return torch_key(tuple(module_path) + ("kernel",)).removesuffix(".weight")


def _peft_layout(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Flax A (*taps, in, rank), B (rank, out) -> PEFT's A (rank, in, *taps), B (out, rank, 1 per tap)."""
  taps = a.ndim - 2
  return a.transpose(taps + 1, taps, *range(taps)), b.T.reshape(b.shape[1], b.shape[0], *(1,) * taps)


def _flax_layout(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  taps = a.ndim - 2
  return a.transpose(*range(2, 2 + taps), 1, 0), b.reshape(b.shape[:2]).T


def adapter_tensors(adapters) -> dict[str, np.ndarray]:
  """{PEFT key: float32 array} of an adapter tree (kvjax.models.lora)."""
  out = {}
  for module, (a, b) in adapter_modules(adapters).items():
    a, b = _peft_layout(np.asarray(a, np.float32), np.asarray(b, np.float32))
    out[f"{peft_module(module)}.lora_A.weight"], out[f"{peft_module(module)}.lora_B.weight"] = a, b
  return out


def write_adapter(path: str, adapters, *, unet_config, lora: LoraConfig, pipeline: str, step: int,
                  overwrite: bool = False) -> int:
  """Writes `adapters` (a LoRA run's, for a UNet of `unet_config`) to `path`; returns the bytes written."""
  metadata = {"format": FORMAT, "base_kind": unet_config.kind, "base_config": json.dumps(unet_config.to_dict()),
              "base_pipeline": pipeline, "rank": str(lora.rank), "alpha": repr(float(lora.alpha or lora.rank)),
              "targets": ",".join(lora.targets), "trigger_words": ",".join(lora.trigger_words),
              "trigger_tokens": json.dumps(trigger_tokens(lora.trigger_words)), "step": str(step)}
  write_safetensors(path, adapter_tensors(adapters), metadata, overwrite=overwrite)
  return os.path.getsize(path)


@dataclasses.dataclass(frozen=True)
class Adapter:
  """An adapter file's contents: the UNet it was made for, its settings and its tensors (a Flax tree,
  float32: `<module path>/kernel_lora_a`, `kernel_lora_b`)."""

  path: str
  kind: str
  config: Any
  rank: int
  alpha: float
  targets: tuple[str, ...]
  trigger_words: tuple[str, ...]
  step: int
  pipeline: str
  adapters: Any
  trigger_tokens: dict[str, str] = dataclasses.field(default_factory=dict)  # word -> "<extra_id_N>"

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _expected(config, lora: LoraConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """{PEFT key: (Flax module path, PEFT shape)} of the adapters `lora` puts on a UNet of `config`."""
  flat = flax.traverse_util.flatten_dict(nn.unbox(abstract_adapters(config, lora)))
  out = {}
  for path, leaf in flat.items():
    if path[-1] != "kernel_lora_a":
      continue
    b = flat[path[:-1] + ("kernel_lora_b",)]
    a_shape, b_shape = _peft_layout(np.empty(leaf.shape, np.float32), np.empty(b.shape, np.float32))
    out[f"{peft_module(path[:-1])}.lora_A.weight"] = (path[:-1], a_shape.shape)
    out[f"{peft_module(path[:-1])}.lora_B.weight"] = (path[:-1], b_shape.shape)
  return out


def read_adapter(path: str, role: str = "--lora") -> Adapter:
  """Reads and checks an adapter file (bounded, nothing executed). Raises AdapterError in one line."""
  where = f"{role} {path}" if role else path
  if not os.path.isfile(path):
    raise AdapterError(f"{where}: no such file")
  if os.path.getsize(path) > MAX_ADAPTER_BYTES:
    raise AdapterError(f"{where}: {os.path.getsize(path)} bytes, more than the {MAX_ADAPTER_BYTES} an adapter "
                       "file may have")
  try:
    tensors, meta = read_safetensors_with_metadata(path)
  except (CheckpointError, OSError) as e:
    raise AdapterError(f"{where}: not a readable safetensors file ({e})") from None
  if meta.get("format") != FORMAT or meta.get("base_kind") not in UNET_KINDS:
    raise AdapterError(f"{where}: not a kvjax LoRA adapter (its metadata has no format {FORMAT!r} with a base_kind "
                       f"of {', '.join(UNET_KINDS)}); make one with `python -m train.export` on a LoRA run")
  kind = meta["base_kind"]
  try:
    config = model_configs.CONFIG_TYPES[kind].from_dict(json.loads(meta.get("base_config", "")))
    rank, alpha = int(meta.get("rank", "")), float(meta.get("alpha", ""))
    targets = tuple(t for t in meta.get("targets", "").split(",") if t)
    lora = LoraConfig(rank=rank, alpha=alpha, targets=targets)
    if rank < 1:
      raise ValueError(f"rank {rank}: must be at least 1")
    expected = _expected(config, lora)
  except (TypeError, ValueError, KeyError) as e:  # json.JSONDecodeError is a ValueError
    raise AdapterError(f"{where}: bad metadata: {e}") from None
  for name in sorted(tensors):
    if name not in expected:
      raise AdapterError(f"{where}: unknown key {name}: not an adapter that rank {rank} on "
                         f"{','.join(targets)} puts on this {kind}")
    if tuple(tensors[name].shape) != expected[name][1]:
      raise AdapterError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, its base makes it "
                         f"{expected[name][1]}")
  missing = sorted(set(expected) - set(tensors))
  if missing:
    raise AdapterError(f"{where}: missing key {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                                                                   else ""))
  flat = {}
  for name, (module, _) in expected.items():
    if name.endswith(".lora_A.weight"):
      b_name = name.removesuffix(".lora_A.weight") + ".lora_B.weight"
      try:
        a, b = tensors[name].numpy(np.float32), tensors[b_name].numpy(np.float32)
      except (CheckpointError, OSError) as e:
        raise AdapterError(f"{where}: {name}: {e}") from None
      flat[module + ("kernel_lora_a",)], flat[module + ("kernel_lora_b",)] = _flax_layout(a, b)
  try:
    step = int(meta.get("step", "0"))
  except ValueError:
    raise AdapterError(f"{where}: bad metadata: step {meta.get('step')!r}") from None
  words = tuple(w for w in meta.get("trigger_words", "").split(",") if w)
  try:
    tokens = json.loads(meta["trigger_tokens"]) if "trigger_tokens" in meta else {}
    if tokens and tokens != trigger_tokens(words):
      raise ValueError(f"{tokens} is not what trigger words {','.join(words)} are read as")
  except ValueError as e:  # json.JSONDecodeError is a ValueError
    raise AdapterError(f"{where}: bad metadata: trigger_tokens: {e}") from None
  return Adapter(path, kind, config, rank, alpha, targets, words, step, meta.get("base_pipeline", ""),
                 flax.traverse_util.unflatten_dict(flat), tokens)


def adapter_words(adapters, role: str = "--lora") -> dict[str, str]:
  """The new words of several adapters (Adapter objects) for `T5Tokenizer.with_words`: AdapterError where two
  read one word as different sentinels, or one sentinel as different words."""
  words: dict[str, str] = {}
  owner: dict[str, str] = {}
  for adapter in adapters:
    for word, token in adapter.trigger_tokens.items():
      if words.setdefault(word, token) != token:
        raise AdapterError(f"{role} {adapter.path}: trigger word {word!r} is read as {token}, and as {words[word]} "
                           "by an adapter before it; load one of them")
      if owner.setdefault(token, word) != word:
        raise AdapterError(f"{role} {adapter.path}: trigger word {word!r} is read as {token}, which an adapter "
                           f"before it reads as {owner[token]!r}; load one of them")
  return words


def check_base(adapter: Adapter, config, role: str = "--lora") -> None:
  """Refuses an adapter made for another UNet than `config` (its kind or any configuration field)."""
  where = f"{role} {adapter.path}" if role else adapter.path
  if adapter.kind != config.kind:
    raise AdapterError(f"{where}: an adapter of the {adapter.kind}, not of the {config.kind}")
  if adapter.config != config:
    from kvjax.conversion.store import _first_difference
    raise AdapterError(f"{where}: made for a {adapter.kind} of another configuration than this pipeline's: "
                       f"{_first_difference(adapter.config, config)}")


__all__ = ["AdapterError", "Adapter", "LORA_TARGETS", "adapter_tensors", "adapter_words", "check_base", "peft_module",
           "read_adapter", "write_adapter"]
