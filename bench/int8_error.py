"""The error of weight-only int8 (kvjax.quantization, `--quantize int8`) against float32, and what it saves.

  python bench/int8_error.py                  # fixtures, T5 over a prompt set, production weight sizes
  python bench/int8_error.py tests/fixtures/t5_encoder --skip-weights   # one fixture folder
  python bench/int8_error.py --demo           # and the embedded demo's judges, int8 against float32 (minutes)

Fixture table: every parity fixture case (tests/fixtures, or the fixture folder given; the sampling loops
replay every step), the relative L2 error against the reference's float32 outputs of our float32 run (the
parity check) and of the same weights written with int8 kernels (`convert --quantize int8`), and int8's max
abs error; the same for `--quantize int8-all` (KEEP_FLOAT's layers in int8 too: T5's wo, the UNets' and MoVQs'
input and output convolutions). The projections take no int8.

T5 table: the t5_encoder fixture's weights (FLAN-T5-like, gated-silu, tiny) over a set of prompts (hashed word
ids): per prompt the cosine and relative L2 of the int8 encoder's states against float32 over its real tokens
(min and mean cosine, max and mean L2), with the feed-forward output projections (wo) kept in float (the
default) and in int8 too.

Weights table: production models' weights in GiB as float32, bfloat16, int8 (kernels int8 with float32 scales,
the kept layers in float32), and int8 with the kept layers in bfloat16 (`convert --dtype bf16 --quantize
int8`), and int8-all (`--quantize int8-all`: no kernel kept in float; for T5 its wo) with bfloat16 leaves.

Demo table (--demo): the embedded demo, float32 weights and `--quantize int8` (T5 and both UNets; also
int8 for every model with the MoVQs: --demo-every-model), 20 prompts (every colour x direction) at seed 0: the judges'
text-to-video direction pass rate and travel, image-to-video direction and first-frame IoU, the 45-frame
videos' evenness (as bench/feature_cache.py; --skip-45f leaves them out), and PSNR of each video against float32's at the same seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # feature_cache's demo inputs
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kvjax import model_configs, quantization  # noqa: E402
from kvjax.parity import convert_round_trip, find_manifests, verify_fixture  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
GIB = 2 ** 30
PROMPTS = ["a red fox running through snow", "waves at sunset", "a city street at night in the rain",
           "a blue square moving left", "an astronaut riding a horse on the moon", "two cats playing piano",
           "a timelapse of clouds over mountains", "fireworks above a river", "a close-up of a bee on a flower",
           "a train crossing a bridge in autumn", "a paper boat floating down a stream", "a dancer spinning slowly",
           "a candle flame flickering in the dark", "a dog catching a frisbee on the beach",
           "snow falling on a quiet village", "a robot walking through a desert", "a jellyfish glowing in deep water",
           "a hot air balloon rising at dawn", "a chef tossing vegetables in a pan", "rain drops on a window",
           "a green circle moving up", "a white triangle moving down slowly", "an old man reading a newspaper",
           "a cup of coffee with steam", "northern lights over a frozen lake", "a skateboarder jumping stairs",
           "a waterfall in a tropical forest", "a butterfly landing on a leaf", "children flying kites in a park",
           "a lighthouse in a storm", "sand dunes shifting in the wind", "a horse galloping across a field"]


def fixture_table(fixtures: str) -> None:
  print(f"{'case':<44} {'fp32 rel L2':>12} {'int8 rel L2':>12} {'int8 max abs':>13} {'int8-all rel L2':>16} "
        f"{'int8-all max abs':>17}")
  for manifest in find_manifests(fixtures):
    fp32 = {r.name: r for r in verify_fixture(manifest)}
    every = {r.name: r for r in verify_fixture(manifest, quantize=quantization.INT8_ALL)}
    for r in verify_fixture(manifest, quantize=True):
      base, a = fp32.get(r.name), every.get(r.name)
      if r.error or base is None or base.error or a is None or a.error:
        print(f"{r.name:<44} {'':>12} {'':>12} {r.error or (base.error if base else 'missing')}")
        continue
      print(f"{r.name:<44} {base.rel_l2_error:12.2e} {r.rel_l2_error:12.2e} {r.max_abs_error:13.3e} "
            f"{a.rel_l2_error:16.2e} {a.max_abs_error:17.3e}", flush=True)


def t5_table(fixtures: str) -> None:
  import json
  from kvjax.params import build_model
  from kvjax.text.hashed_tokenizer import HashedWordTokenizer
  folder = os.path.join(fixtures, "t5_encoder")
  with open(os.path.join(folder, "manifest.json")) as f:
    manifest = json.load(f)
  config = model_configs.T5EncoderConfig.from_dict(manifest["config"])
  converted = convert_round_trip("t5_encoder", os.path.join(folder, manifest["checkpoint"]), config)
  tokens = HashedWordTokenizer(config.vocab_size, 32)(PROMPTS)
  ids, mask = np.asarray(tokens.input_ids), np.asarray(tokens.attention_mask)
  encode = jax.jit(lambda p, ids, mask: build_model(config).apply({"params": p}, ids, mask))
  reference = np.asarray(encode(converted.params, ids, mask), np.float64)
  print(f"\n## T5 (the t5_encoder fixture: {config.num_layers} layers, d_model {config.d_model}, "
        f"{config.feed_forward_proj}), {len(PROMPTS)} prompts, int8 against float32 over real tokens")
  print(f"{'int8 kernels':<24} {'min cos':>10} {'mean cos':>10} {'max rel L2':>11} {'mean rel L2':>12}")
  for label, keep in (("all but wo (int8)", None), ("all, wo too (int8-all)", ())):
    params = quantization.quantize_params(jax.device_get(converted.params), "t5_encoder", keep)
    states = np.asarray(encode(params, ids, mask), np.float64)
    cos, rel = [], []
    for a, b, m in zip(states, reference, mask.astype(bool)):
      a, b = a[m].ravel(), b[m].ravel()
      cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
      rel.append(np.linalg.norm(a - b) / np.linalg.norm(b))
    print(f"{label:<24} {min(cos):>10.6f} {np.mean(cos):>10.6f} {max(rel):>11.2e} {np.mean(rel):>12.2e}")


def weights_table() -> None:
  from kvjax.params import abstract_params
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  from kvjax.pipeline.pipeline_weights import KINDS
  config = PIPELINE_PRESETS["kandinsky-video-1.1"]
  print("\n## production weights, GiB (kandinsky-video-1.1)")
  print(f"{'model':<16} {'float32':>8} {'bfloat16':>9} {'int8':>8} {'int8+bf16':>10} {'int8-all+bf16':>14}")
  for field in quantization.MODEL_NAMES.values():
    c, kind = getattr(config, field), KINDS[field]
    sizes = [quantization.weight_bytes(jax.tree.map(lambda a, d=d: jax.ShapeDtypeStruct(a.shape, d),
                                                    nn.unbox(abstract_params(c)))) for d in (jnp.float32, jnp.bfloat16)]
    sizes += [quantization.weight_bytes(quantization.quantized_abstract(c, kind, d)) for d in (jnp.float32, jnp.bfloat16)]
    sizes.append(quantization.weight_bytes(quantization.quantized_abstract(c, kind, jnp.bfloat16, ())))
    print(f"{field:<16} " + " ".join(f"{s / GIB:>{w}.2f}" for s, w in zip(sizes, (8, 9, 8, 10, 14))))


def demo_table(every_model: bool, medium: bool) -> None:
  from feature_cache import demo_inputs
  from kvjax import demo
  from kvjax.demo import judge
  from kvjax.pipeline.pipeline_config import GenerationOptions
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.text.tokenizer import T5Tokenizer

  base = GenerationOptions(**demo.DEMO_OPTIONS)
  cases, prompts, pictures = demo_inputs(base)
  tokenizer = T5Tokenizer(os.path.join(demo.DEMO_WEIGHTS, "spiece.model"), 16)
  print(f"\n## the embedded demo: {len(prompts)} prompts, seed 0, {base.sampler} {base.key_frame_steps}/"
        f"{base.base_frame_steps}/{base.interpolation_steps} steps; PSNR against float32 at the same seed")
  print(f"{'weights':<22}{'MiB':>7}{'s/batch':>9}{'direction':>10}{'travel':>8}{'i2v dir':>8}{'IoU':>6}{'even':>6}"
        f"{'PSNR':>7}{'PSNR i2v':>9}{'PSNR 45f':>9}", flush=True)
  reference = None
  every = ",".join(f"{name}=int8" for name in quantization.MODEL_NAMES)
  runs = (("float32", None), ("int8 (T5, UNets)", "int8"), ("int8 (every model)", every))[:2 + every_model]
  for label, spec in runs:
    quantize = quantization.parse_quantize(spec) if spec else None
    config, weights = load_pipeline_weights(demo.DEMO_WEIGHTS, tokens_length=16, quantize=quantize)
    size = sum(quantization.weight_bytes(getattr(weights, f)) for f in quantization.MODEL_NAMES.values())
    pipeline = TextToVideo(config, weights, tokenizer)
    start = time.perf_counter()
    videos = pipeline(prompts, base)
    seconds = time.perf_counter() - start
    verdicts = [judge.judge_motion(v, c, d) for v, (c, _, d) in zip(videos, cases)]
    i2v = pipeline(prompts, base, pictures)
    iou = [judge.first_frame_match(v[0], np.asarray(p), c) for v, p, (c, _, _) in zip(i2v, pictures, cases)]
    medium = pipeline(prompts, dataclasses.replace(base, fps="medium")) if medium else None
    evenness = np.array([judge.step_evenness(v, c) for v, (c, _, _) in zip(medium, cases)] if medium else [np.nan])
    if reference is None:
      reference = (videos, i2v, medium)
    psnr = [np.mean([judge.psnr(v, r) for v, r in zip(a, b)]) if a is not None else np.nan
            for a, b in zip((videos, i2v, medium), reference)]
    print(f"{label:<22}{size / 2 ** 20:>7.1f}{seconds:>9.1f}{np.mean([v.passed for v in verdicts]):>10.2f}"
          f"{np.nanmean([v.along for v in verdicts]):>8.3f}"
          f"{np.mean([judge.judge_motion(v, c, d).passed for v, (c, _, d) in zip(i2v, cases)]):>8.2f}"
          f"{np.mean(np.array(iou) > 0.5):>6.2f}{np.mean(evenness < 4) if medium is not None else np.nan:>6.2f}"
          + "".join(f"{p:>{w}.1f}" for p, w in zip(psnr, (7, 9, 9))), flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("fixtures", nargs="?", default=FIXTURES)
  p.add_argument("--demo", action="store_true", help="also the embedded demo's judges (minutes)")
  p.add_argument("--demo-every-model", action="store_true", help="with --demo, also int8 for every model")
  p.add_argument("--skip-45f", action="store_true", help="with --demo, no 45-frame videos (evenness)")
  p.add_argument("--skip-fixtures", action="store_true")
  p.add_argument("--skip-weights", action="store_true")
  args = p.parse_args(argv)
  print(f"# jax {jax.__version__}, {jax.default_backend()} backend")
  if not args.skip_fixtures:
    fixture_table(args.fixtures)
    t5_table(FIXTURES)
  if not args.skip_weights:
    weights_table()
  if args.demo:
    demo_table(args.demo_every_model, not args.skip_45f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
