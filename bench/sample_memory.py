"""Per-device memory and FLOPs of every generation stage, compile-only (no weights: shapes and shardings).
  python bench/sample_memory.py                                   # production, 512x512, fps medium, bf16
  python bench/sample_memory.py --devices 1 4 8 --prompts 1 --dtype bfloat16
  python bench/sample_memory.py --preset tiny --width 64 --height 64 --dtype float32   # seconds, a smoke run
  python bench/sample_memory.py --devices 1 --quantize int8 --skip-flops     # T5 and the UNets in int8
Each stage's program (kvjax.pipeline.programs, the functions TextToVideo compiles) is lowered with abstract
weights sharded by the rule table over `fsdp=N` simulated CPU devices and compiled; XLA's buffer assignment
gives one device's bytes (the CPU backend's: a GPU or TPU compile fuses differently, so its temp differs).
In bfloat16 the CPU backend computes every dot in float32 and so converts the weights it multiplies: a
stage's temp then holds float32 copies of its weights (measured on a 6-layer, 1024-wide T5: temp 0.29 GiB
with 0.21 GiB of bf16 weights, 0.05 GiB with the same model in float32). The text stage's temp of about
twice its weights is this; GPUs and TPUs multiply bfloat16 directly, so read temp in bf16 as an upper bound.

Memory table, GiB per device:
  weights    this stage's models, this device's shards (in the --dtype the weights are converted to; whole
             models, as offloading places them: the video decoder with its unused encoder)
  temp       what the stage's program allocates besides its inputs and outputs (activations, workspace)
  io         the stage's other inputs and its outputs (latents, contexts, pixels)
  offload    weights + temp + io: the stage alone on the devices (`--offload`)
  resident   every model's weights + temp + io: the stage with all weights kept on the devices (the default)
Below it, the largest of each column over the stages against 16, 24, 40 and 80 GB devices.

FLOPs table, for one generation of --prompts prompts (whole devices together):
  matmul+conv  the dense FLOPs of every dot and convolution, counted from the program's jaxpr with every
               denoising step (XLA's cost analysis counts a loop's body once; elementwise work is left out)
  H100 s       matmul+conv / 989e12: the lower bound on one H100 (dense bf16 peak, no overlap lost)
  XLA/ours     XLA's cost analysis of the stage run with one denoising step (every operation) over our
               count of the same program: the check of the count (a little above 1: elementwise work)
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="kandinsky-video-1.1")
  p.add_argument("--width", type=int, default=512)
  p.add_argument("--height", type=int, default=512)
  p.add_argument("--fps", default="medium", choices=("low", "medium", "high"))
  p.add_argument("--prompts", type=int, default=1)
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                 help="the computation type and the weights' (as `convert --dtype` writes them)")
  p.add_argument("--devices", type=int, nargs="+", default=[1, 4, 8], help="meshes fsdp=N")
  p.add_argument("--stages", help="comma-separated subset of the stage names (default: all)")
  p.add_argument("--skip-flops", action="store_true")
  p.add_argument("--quantize", help="weights in int8 as `python -m sample --quantize` takes them (e.g. int8, or "
                 "t5=int8-all,keyframe=int8): int8 kernels with float32 scales, the rest in --dtype")
  return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # before jax is imported: the CPU backend reads the device count once
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={max(ARGS.devices)}"]).strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from kvjax.flops import dense_flops  # noqa: E402
from kvjax.models.movq import reference_chunk_sizes  # noqa: E402
from kvjax.models.t5_encoder import scan_layout  # noqa: E402
from kvjax.params import abstract_params  # noqa: E402
from kvjax.pipeline.pipeline_config import FPS_PASSES, PIPELINE_PRESETS, GenerationOptions  # noqa: E402
from kvjax.pipeline.programs import StagePrograms  # noqa: E402
from kvjax.pipeline.stages import BASE_FRAMES, DECODE, ENCODE, INTERPOLATION, KEY_FRAME, TEXT  # noqa: E402
from kvjax.pipeline.text_to_video import weight_shardings  # noqa: E402
from kvjax.pipeline.pipeline_weights import KINDS, PipelineWeights  # noqa: E402
from kvjax.quantization import parse_quantize, quantized_abstract  # noqa: E402
from kvjax.sharding import make_mesh, replicated  # noqa: E402
from train_memory import GIB, per_device_bytes as sharded_bytes  # noqa: E402  (bench/ is the script's path)

H100_DENSE_BF16 = 989e12
DEVICE_SIZES_GB = (16, 24, 40, 80)


# --- abstract weights and inputs ---------------------------------------------------------------------------

def weight_shapes(config, dtype, quantize=None) -> PipelineWeights:
  """Every model's parameters as ShapeDtypeStructs in `dtype` (T5 per block, as loaded); the models of
  `quantize` ({field: "int8" | "int8-all"}) with int8 kernels (kvjax.quantization.quantized_abstract)."""
  def model(field):
    c = getattr(config, field)
    if field in (quantize or {}):
      return nn.unbox(quantized_abstract(c, KINDS[field], dtype, how=quantize[field]))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype), nn.unbox(abstract_params(c)))
  null = jax.ShapeDtypeStruct((config.keyframe.context_dim,), jnp.float32)
  return PipelineWeights(model("keyframe"), null, model("interpolation"), null, model("image_movq"),
                         model("video_movq"), model("text_encoder"), model("projections"))


def abstract_weights(config, dtype, shardings: PipelineWeights, quantize=None) -> PipelineWeights:
  """Every model's parameters as ShapeDtypeStructs in `dtype` (`weight_shapes`), placed as `shardings` says
  (T5 scanned)."""
  tree = weight_shapes(config, dtype, quantize)
  t5 = jax.eval_shape(lambda t: scan_layout(t, config.text_encoder.num_layers, lambda *xs: jnp.stack(xs)),
                      tree.text_encoder)
  tree = tree.replace(text_encoder=t5)
  shardings = shardings.replace(latent_normalization=None)  # the official weights have none
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def per_device_bytes(tree) -> int:
  """One device's bytes of abstract arrays that carry their shardings."""
  return sharded_bytes(tree, jax.tree.map(lambda a: a.sharding, tree))


def stage_calls(programs: StagePrograms, weights: PipelineWeights, options: GenerationOptions, prompts: int,
                steps: int | None = None):
  """(stage name, weight fields, function, abstract arguments) of every stage in the order they run; `steps`
  replaces every denoising stage's step count (the FLOPs check runs one)."""
  config = programs.config
  f = config.image_movq.downsampling_factor
  h, w = options.height // f, options.width // f
  n, d = config.tokens_length, config.keyframe.context_dim
  s = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  pair = (s((prompts, n, d)), s((prompts, n), jnp.bool_))
  rng, scalar, length = jax.eval_shape(lambda: jax.random.key(0)), s(()), s((), jnp.int32)
  sampler = lambda stage: programs.sampler(stage, steps or getattr(options, stage.steps), options)
  # Latent normalizations are None in these calls: the official weights have none (a few numbers if any).
  calls = [(TEXT.name, TEXT.models, programs.text(), (s((prompts, n), jnp.int32), s((prompts, n), jnp.int32)))]
  key_frame = programs.key_frame((2 * h, 2 * w), sampler(KEY_FRAME))
  calls.append((KEY_FRAME.name, KEY_FRAME.models, key_frame, (None, pair, pair, scalar, rng, length)))
  calls.append((ENCODE.name, ENCODE.models, programs.encode(),
                (None, s((prompts, options.height, options.width, 3), jnp.uint8))))
  base = programs.base_frames(sampler(BASE_FRAMES))
  base_args = (s((prompts, h, w, 4)), pair, pair, scalar, scalar, s((), jnp.int32), s((), jnp.int32), rng, length,
               s((), jnp.int32), s((prompts, 12, h, w, 4)))
  calls.append((BASE_FRAMES.name, BASE_FRAMES.models, base, base_args))
  frames = s((prompts, 12, h, w, 4))
  for i, skip in enumerate(FPS_PASSES[options.fps]):
    run = programs.interpolation(sampler(INTERPOLATION), skip)
    calls.append((f"{INTERPOLATION.name} {i + 1}", INTERPOLATION.models, run,
                  (frames, pair, pair, scalar, rng, length)))
    frames = jax.eval_shape(run, weights.interpolation, frames, pair, pair, scalar, rng, length)
  for size in sorted(set(reference_chunk_sizes(frames.shape[1]))):
    chunks = reference_chunk_sizes(frames.shape[1]).count(size)
    calls.append((f"{DECODE.name} {size} x{chunks}", DECODE.models, programs.decode(size),
                  (None, s((prompts * size, h, w, 4)))))
  return calls


def _placed(args, mesh):
  """Abstract inputs replicated on `mesh` (the pipeline's inputs arrive replicated; the programs re-shard)."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)), args)


# --- the tables ----------------------------------------------------------------------------------------------

def memory_rows(config, options, dtype, devices: int, prompts: int, wanted, quantize=None):
  mesh = make_mesh(f"fsdp={devices}", jax.devices()[:devices])
  programs = StagePrograms(config, dtype, mesh=mesh)
  shardings = weight_shardings(config, mesh, weight_shapes(config, dtype, quantize))
  weights = abstract_weights(config, dtype, shardings, quantize)
  every_model = per_device_bytes(weights)  # what stays on the devices without offload
  rows = []
  for name, fields, fn, args in stage_calls(programs, weights, options, prompts):
    if wanted and not any(name.startswith(w) for w in wanted):
      continue
    start = time.perf_counter()
    stage_weights = tuple(getattr(weights, f) for f in fields)
    memory = jax.jit(fn, keep_unused=True).lower(*stage_weights, *_placed(args, mesh)).compile().memory_analysis()
    own = sum(per_device_bytes(w) for w in stage_weights)
    io = memory.argument_size_in_bytes - own + memory.output_size_in_bytes - memory.alias_size_in_bytes
    temp = memory.temp_size_in_bytes
    rows.append(dict(stage=name, weights=own / GIB, temp=temp / GIB, io=io / GIB,
                     offload=(own + temp + io) / GIB, resident=(every_model + temp + io) / GIB,
                     seconds=time.perf_counter() - start))
  return rows


def flops_rows(config, options, dtype, prompts: int, wanted):
  programs = StagePrograms(config, dtype)
  mesh = make_mesh("", jax.devices()[:1])
  weights = abstract_weights(config, dtype, weight_shardings(config, mesh))
  one_step = {name: (fn, args) for name, _, fn, args in stage_calls(programs, weights, options, prompts, steps=1)}
  rows = []
  for name, fields, fn, args in stage_calls(programs, weights, options, prompts):
    if wanted and not any(name.startswith(w) for w in wanted):
      continue
    stage_weights = tuple(getattr(weights, f) for f in fields)
    chunks = int(name.split(" x")[1]) if name.startswith(DECODE.name) else 1
    counted = chunks * dense_flops(jax.make_jaxpr(fn)(*stage_weights, *args))
    fn1, args1 = one_step[name]
    counted_one_step = dense_flops(jax.make_jaxpr(fn1)(*stage_weights, *args1))
    xla = jax.jit(fn1).lower(*stage_weights, *args1).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    rows.append(dict(stage=name, flops=counted, h100=counted / H100_DENSE_BF16,
                     xla_ratio=float(xla.get("flops", float("nan"))) / counted_one_step))
  return rows


def main(args) -> None:
  config = PIPELINE_PRESETS[args.preset]
  options = GenerationOptions(width=args.width, height=args.height, fps=args.fps)
  options.check_size(config)
  dtype = jnp.dtype(args.dtype)
  wanted = args.stages.split(",") if args.stages else None
  quantize = parse_quantize(args.quantize) if args.quantize else None
  print(f"# {args.preset}, {args.width}x{args.height}, fps {args.fps}, {args.prompts} prompt(s), {args.dtype}"
        f"{'; int8: ' + ', '.join(quantize) if quantize else ''}; jax {jax.__version__}, {jax.default_backend()} backend")
  for devices in args.devices:
    rows = memory_rows(config, options, dtype, devices, args.prompts, wanted, quantize)
    print(f"\n## fsdp={devices}: GiB per device")
    print(f"{'stage':<22} {'weights':>8} {'temp':>8} {'io':>8} {'offload':>8} {'resident':>9} {'compile s':>10}")
    for r in rows:
      print(f"{r['stage']:<22} {r['weights']:>8.2f} {r['temp']:>8.2f} {r['io']:>8.2f} {r['offload']:>8.2f} "
            f"{r['resident']:>9.2f} {r['seconds']:>10.1f}")
    for column in ("offload", "resident"):
      peak = max(r[column] for r in rows)
      fits = [f"{gb} GB {'yes' if peak * GIB <= gb * 1e9 else 'no'}" for gb in DEVICE_SIZES_GB]
      print(f"{'largest ' + column:<22} {peak:>8.2f} GiB: " + ", ".join(fits))
  if not args.skip_flops:
    print(f"\n## FLOPs of one generation ({args.prompts} prompt(s))")
    print(f"{'stage':<22} {'matmul+conv':>12} {'H100 s':>8} {'XLA/ours, 1 step':>17}")
    rows = flops_rows(config, options, dtype, args.prompts, wanted)
    for r in rows:
      print(f"{r['stage']:<22} {r['flops']:>12.3e} {r['h100']:>8.3f} {r['xla_ratio']:>17.3f}")
    total = sum(r["flops"] for r in rows)
    print(f"{'total':<22} {total:>12.3e} {'':>13} {total / H100_DENSE_BF16:>8.3f}")


if __name__ == "__main__":
  main(ARGS)
