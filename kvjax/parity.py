"""Checks a conversion against reference outputs recorded by the official PyTorch code.

A fixture folder holds `manifest.json` (see tests/fixtures/README.md): the model kind, the checkpoint in
the official container format, the reference constructor config, and cases, each an `.npz` of inputs
(`in/<name>`, reference names and NCHW layout) and outputs (`out/<name>`) with a tolerance on the
relative L2 error of the whole output. Verification converts the checkpoint with the real converter,
writes and re-reads it, runs the Flax model on the inputs and compares.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Callable

import jax
import numpy as np

from kvjax import model_configs
from kvjax.conversion.registry import CONVERTERS
from kvjax.conversion.store import ConvertedModel, load_converted, save_converted
from kvjax.models.movq import reference_chunk_sizes
from kvjax.params import build_model

DEFAULT_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class CaseResult:
  name: str
  max_abs_error: float
  rel_l2_error: float
  tolerance: float
  error: str = ""

  @property
  def ok(self) -> bool:
    return not self.error and self.rel_l2_error <= self.tolerance

  def line(self) -> str:
    if self.error:
      return f"FAIL {self.name}: {self.error}"
    return (f"{'ok  ' if self.ok else 'FAIL'} {self.name}: max abs {self.max_abs_error:.3e}, "
            f"rel L2 {self.rel_l2_error:.3e} (tolerance {self.tolerance:.1e})")


def _to_nhwc(a):  # (..., C, H, W) -> (..., H, W, C)
  return np.moveaxis(a, -3, -1)


def _replayed_loop(converted: ConvertedModel, inputs: dict[str, np.ndarray], prediction: str, spacing: str):
  """What a sampling-loop case shares: (text, null context, sampler options, the recorded noise, an rng no
  draw uses)."""
  from kvjax.diffusion.schedule import SchedulerConfig
  from kvjax.pipeline import samplers
  from kvjax.text.conditioning import unconditional_context
  mask = inputs["context_mask"].astype(bool)
  null = unconditional_context(converted.extras["null_embedding"], *mask.shape)
  options = samplers.SamplerOptions(SchedulerConfig(prediction, spacing, int(inputs["num_inference_steps"])))
  noise = {"initial_noise": _to_nhwc(inputs["initial_noise"]), "step_noise": _to_nhwc(inputs["step_noise"])}
  return (inputs["context"], mask), null, options, noise, jax.random.key(0)


def _keyframe_sampling_case(model, converted: ConvertedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The reference's first-frame or base-frame loop with its recorded noise (spec §7.6)."""
  from kvjax.pipeline import samplers
  text, null, options, noise, rng = _replayed_loop(converted, inputs, "epsilon", "leading")
  if "key_frame" in inputs:
    noise["augmentation_noise"] = _to_nhwc(inputs["augmentation_noise"])[None]
    run = jax.jit(lambda p, k, text, null, wt, wi, motion, level: samplers.base_frames(
        model, p, k, text, null, wt, wi, motion, level, rng, options, noise))
    latents = run(converted.params, _to_nhwc(inputs["key_frame"])[None], text, null, inputs["text_scale"],
                  inputs["image_scale"], inputs["motion_score"], inputs["noise_level"])[0]
  else:
    size = noise["initial_noise"].shape[1:3]
    run = jax.jit(lambda p, text, null, w: samplers.first_frame(model, p, text, null, w, rng, size, options, noise))
    latents = run(converted.params, text, null, inputs["guidance_scale"])
  return {"latents": np.moveaxis(np.asarray(latents), -1, 1)}


def _keyframe_case(model, converted: ConvertedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  if "initial_noise" in inputs:
    return _keyframe_sampling_case(model, converted, inputs)
  params = converted.params
  num_frames = None
  temporal = {}
  if "temporal_embed" in inputs:
    frame_index = inputs["temporal_embed"]
    if "num_frames" in inputs:
      num_frames = int(inputs["num_frames"])
    else:  # each video restarts its frame indices: count the videos by their first index
      num_frames = len(frame_index) // int(np.sum(frame_index == frame_index[0]))
    temporal = {"frame_index": frame_index}
    temporal.update({k: inputs[k] for k in ("noise_aug_time", "motion_score") if k in inputs})
  run = jax.jit(lambda p, x, t, c, m, kw: model.apply({"params": p}, x, t, c, m, num_frames=num_frames, **kw))
  eps = run(params, _to_nhwc(inputs["x"]), inputs["time"], inputs["context"], inputs["context_mask"], temporal)
  return {"eps": np.moveaxis(np.asarray(eps), -1, 1)}


def _interpolation_sampling_case(model, converted: ConvertedModel,
                                 inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The reference's interpolation loop with its recorded noise (spec §7.6, §8.5): `latents` as the loop
  returns them (G, 12, h, w), channels (t c), and `video`, the 4T - 3 frames the pipeline interleaves."""
  from kvjax.pipeline import samplers
  text, null, options, noise, rng = _replayed_loop(converted, inputs, "v_prediction", "trailing")
  skip = int(inputs["skip_frames"])
  run = jax.jit(lambda p, frames, text, null, w: samplers.interpolate(
      model, p, frames, text, null, w, skip, rng, options, noise))
  video = np.asarray(run(converted.params, _to_nhwc(inputs["key_frames"])[None], text, null,
                         inputs["guidance_scale"]))[0]  # (4T - 3, h, w, c)
  g = (len(video) - 1) // 4
  _, h, w, c = video.shape
  new = video[:-1].reshape(g, 4, h, w, c)[:, 1:]  # group i's frames follow original i
  latents = new.transpose(0, 1, 4, 2, 3).reshape(g, samplers.FRAMES_PER_GROUP * c, h, w)
  return {"latents": latents, "video": np.moveaxis(video, -1, 1)}


def _interpolation_case(model, converted: ConvertedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  if "initial_noise" in inputs:
    return _interpolation_sampling_case(model, converted, inputs)
  params = converted.params
  num_groups = int(inputs["num_predicted_groups"])
  optional = {k: inputs[k] for k in ("perturbation_time", "skip_frames", "temporal_mask") if k in inputs}
  run = jax.jit(lambda p, x, t, c, m, kw: model.apply({"params": p}, x, t, c, m, num_groups=num_groups, **kw))
  v = run(params, _to_nhwc(inputs["x"]), inputs["time"], inputs["context"], inputs["context_mask"], optional)
  return {"v": np.moveaxis(np.asarray(v), -1, 1)}


def _movq_case(model, converted: ConvertedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  params = converted.params
  if "images" in inputs:
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))
    return {"latents": np.moveaxis(np.asarray(encode(params, _to_nhwc(inputs["images"]))), -1, 1)}
  latents = _to_nhwc(inputs["latents"])
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))
  if "reference_chunks" in inputs:  # the pipeline's video decode: clips decoded independently (spec §8.6)
    bounds = np.cumsum([0, *reference_chunk_sizes(len(latents))])
    images = np.concatenate([decode(params, latents[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
  else:
    images = decode(params, latents)
  return {"images": np.moveaxis(np.asarray(images), -1, 1)}


def _t5_encoder_case(model, converted: ConvertedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  encode = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))
  return {"last_hidden_state": np.asarray(encode(converted.params, inputs["input_ids"], inputs["attention_mask"]))}


def _text_projections_case(model, converted: ConvertedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """One projection head on T5 states, then masking and the cut to the longest prompt + 1 (spec §6.4)."""
  from kvjax.text.conditioning import text_context
  context, mask = text_context(converted.params, inputs["hidden_states"], inputs["attention_mask"],
                               converted.config, head=str(inputs["head"]))
  return {"context": np.asarray(context), "context_mask": np.asarray(mask).astype(inputs["attention_mask"].dtype)}


# kind -> (model, converted checkpoint, case inputs) -> outputs
CASE_RUNNERS: dict[str, Callable[[Any, ConvertedModel, dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "keyframe_unet": _keyframe_case,
    "interpolation_unet": _interpolation_case,
    "movq": _movq_case,
    "t5_encoder": _t5_encoder_case,
    "t5_projections": _text_projections_case,
}


def find_manifests(root: str) -> list[str]:
  """`root/manifest.json`, else every `root/*/manifest.json` (sorted)."""
  if os.path.isfile(os.path.join(root, "manifest.json")):
    return [os.path.join(root, "manifest.json")]
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root}: no such fixture folder")
  found = sorted(os.path.join(root, d, "manifest.json") for d in os.listdir(root)
                 if os.path.isfile(os.path.join(root, d, "manifest.json")))
  if not found:
    raise FileNotFoundError(f"{root}: no manifest.json in it or in its sub-folders")
  return found


def convert_round_trip(kind: str, checkpoint: str, config, quantize: bool | str = False) -> ConvertedModel:
  """Converts with the real converter, writes the result to disk and reads it back through the checking loader,
  each array placed on the default device as it is read (no host copy of the whole model beside the device's).
  `quantize`: written with int8 kernels, as `convert --quantize int8` writes them (True), or as `--quantize
  int8-all` (a name of kvjax.quantization.QUANTIZATIONS)."""
  converter = CONVERTERS[kind]
  with tempfile.TemporaryDirectory() as scratch:
    out = os.path.join(scratch, "converted")
    converted = converter(checkpoint, config)
    if quantize:
      from kvjax.quantization import INT8, quantize_params
      converted.params = quantize_params(converted.params, kind, how=INT8 if quantize is True else quantize)
    save_converted(converted, out, source=checkpoint)
    return load_converted(out, kind, config, placement=None)


def verify_fixture(manifest_path: str, compute_dtype=None, quantize: bool | str = False) -> list[CaseResult]:
  """Every case of one fixture folder; `compute_dtype` (e.g. jnp.bfloat16) runs the model in it instead of
  float32, and `quantize` with int8 kernels (True, or "int8-all" as convert_round_trip; models that take them),
  to measure their error against the reference (bench/bf16_error.py, bench/int8_error.py), not to pass the
  tolerances."""
  folder = os.path.dirname(manifest_path)
  with open(manifest_path) as f:
    manifest = json.load(f)
  kind = manifest["model"]
  prefix = os.path.basename(folder)
  if kind not in CASE_RUNNERS:
    return [CaseResult(prefix, 0, 0, 0, f"no verifier for model kind {kind!r}")]
  try:
    config = model_configs.CONFIG_TYPES[kind].from_dict(manifest["config"])
    from kvjax.quantization import KINDS
    converted = convert_round_trip(kind, os.path.join(folder, manifest["checkpoint"]), config,
                                   quantize if kind in KINDS else False)
  except Exception as e:  # report and go on to the next fixture
    return [CaseResult(prefix, 0, 0, 0, f"conversion failed: {type(e).__name__}: {e}")]
  model = build_model(config) if compute_dtype is None else build_model(config, compute_dtype)
  results = []
  for case, spec in manifest["cases"].items():
    name = f"{prefix}/{case}"
    with np.load(os.path.join(folder, spec["file"])) as data:
      inputs = {k[3:]: data[k] for k in data.files if k.startswith("in/")}
      expected = {k[4:]: data[k] for k in data.files if k.startswith("out/")}
    tolerance = float(spec.get("tolerance_rel_l2", DEFAULT_TOLERANCE))
    try:
      outputs = CASE_RUNNERS[kind](model, converted, inputs)
    except Exception as e:
      results.append(CaseResult(name, 0, 0, tolerance, f"{type(e).__name__}: {e}"))
      continue
    for key, ref in expected.items():
      got = outputs[key]
      if got.shape != ref.shape:
        results.append(CaseResult(f"{name}/{key}", 0, 0, tolerance, f"shape {got.shape} != {ref.shape}"))
        continue
      diff = got.astype(np.float64) - ref.astype(np.float64)
      rel = float(np.linalg.norm(diff) / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))
      results.append(CaseResult(f"{name}/{key}" if len(expected) > 1 else name, float(np.abs(diff).max()),
                                rel, tolerance))
  return results
