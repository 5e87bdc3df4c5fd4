"""Converts official Kandinsky Video 1.1 checkpoints and verifies conversions against reference outputs.

  python -m convert keyframe t2v.pt OUT_DIR [--config PRESET|configs.json] [--dtype fp32|bf16|fp16]
  (also: interpolation, movq, video-movq, t5, projections)
  python -m convert all RELEASE_DIR OUT_DIR [--t5 T5_DIR] [--dtype ...] [--quantize int8|MODEL=int8,...]
  python -m convert lpips vgg.pth OUT_DIR --vgg vgg16-397923af.pth   (or one lpips.LPIPS state dict)
  python -m convert verify FIXTURE_DIR

Tensors holding NaN or Inf, and tensors stored as integers or bools (every parameter is floating point),
are refused by name; --allow-nonfinite and --allow-integer-weights convert them (with a warning).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ml_dtypes
import numpy as np

from kvjax.cli import program_name

DTYPES = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16, "fp16": np.float16}


def _add_weight_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--allow-nonfinite", action="store_true", help="convert tensors holding NaN or Inf (or values "
                 "the output dtype cannot hold) as they are, with a warning naming them; refused by default")
  p.add_argument("--allow-integer-weights", action="store_true", help="cast tensors stored as integers or "
                 "bools to the float parameters they fill, with a warning naming them; refused by default")


def _policy(args):
  from kvjax.conversion.state_dict import WeightPolicy
  return WeightPolicy(allow_nonfinite=args.allow_nonfinite, allow_integer=args.allow_integer_weights)


def _warn(policy) -> None:
  for warning in policy.warnings:
    print(f"warning: {warning}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
  from kvjax.conversion.registry import COMMANDS
  parser = argparse.ArgumentParser(prog=program_name("convert", __package__), description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  for command, converter in COMMANDS.items():
    p = commands.add_parser(command, help=f"convert {converter.release_file} ({converter.kind})")
    p.add_argument("src", help=f"the official checkpoint file ({converter.release_file})")
    p.add_argument("out", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--config", help="preset name or JSON file; default: configs.json beside SRC, else the "
                   "production preset")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="parameter dtype (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quantize", choices=["int8", "int8-all"], help="store the kernels in weight-only int8 with "
                   "per-channel scales (keyframe, interpolation, movq, video-movq, t5; int8-all: also the layers "
                   "int8 keeps in float, e.g. T5's wo; see docs/sampling.md)")
    _add_weight_flags(p)
  p = commands.add_parser("all", help="convert a whole release folder (t2v.pt, interpolation.pt, movq.pt, "
                          "video_movq.pt, t5_projections.pt, configs.json and a T5 folder)")
  p.add_argument("src", help="the release folder")
  p.add_argument("out", help="output folder, one converted sub-folder per model (must not exist unless "
                 "--overwrite)")
  p.add_argument("--t5", help="the Hugging Face T5 folder (default: the sub-folder of SRC with a T5 config.json)")
  p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="parameter dtype (default fp32)")
  p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  p.add_argument("--quantize", metavar="int8|MODEL=int8,...", help="store kernels in weight-only int8: int8 for T5 "
                 "and both UNets, or per model, e.g. t5=int8-all,keyframe=int8 (models: t5, keyframe, interpolation, "
                 "image-movq, video-movq; int8-all: also the layers int8 keeps in float, e.g. T5's wo); see "
                 "docs/sampling.md")
  _add_weight_flags(p)
  p = commands.add_parser("lpips", help="convert LPIPS (net='vgg') weights for the MoVQ trainer's perceptual loss")
  p.add_argument("src", help="the lpips package's linear heads (lpips/weights/v0.1/vgg.pth), or the state dict "
                 "of a whole lpips.LPIPS(net='vgg')")
  p.add_argument("out", help="output folder (must not exist unless --overwrite)")
  p.add_argument("--vgg", help="torchvision's VGG16 ImageNet state dict (vgg16-397923af.pth), when SRC holds "
                 "only the heads")
  p.add_argument("--config", default="lpips-vgg", help="LPIPS preset (default lpips-vgg)")
  p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="parameter dtype (default fp32)")
  p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  _add_weight_flags(p)
  p = commands.add_parser("verify", help="check conversions against reference outputs")
  p.add_argument("fixtures", help="a fixture folder (with manifest.json) or a folder of them")
  return parser


def _check_output(out: str, overwrite: bool) -> None:
  """Before any conversion work: OUT must be free (or --overwrite) and its folder writable."""
  from kvjax.atomic import check_free, check_writable
  check_free(out, overwrite)
  check_writable(os.path.dirname(os.path.abspath(out)))


def _convert(args) -> int:
  from kvjax import quantization
  from kvjax.conversion.registry import COMMANDS, resolve_config
  kind = COMMANDS[args.command].kind
  if args.quantize:
    quantization.check_kind(kind, "--quantize: ")
  _check_output(args.out, args.overwrite)
  from kvjax.conversion.store import save_converted
  from kvjax.params import count_params
  config, origin = resolve_config(args.command, args.src, args.config)
  start = time.perf_counter()
  policy = _policy(args)
  converted = COMMANDS[args.command].convert(args.src, config, DTYPES[args.dtype], policy=policy)
  count = count_params(converted.params)
  if args.quantize:
    converted.params = quantization.quantize_params(converted.params, kind, how=args.quantize)
  out = save_converted(converted, args.out, source=args.src, overwrite=args.overwrite)
  _warn(policy)
  print(f"converted {args.src} ({count:,} parameters, config from {origin}, {args.dtype}"
        f"{', kernels in int8' if args.quantize else ''}) -> {out} in {time.perf_counter() - start:.1f} s")
  return 0


def _convert_lpips(args) -> int:
  from kvjax.conversion.lpips import IGNORED_COUNT, convert_lpips
  from kvjax.conversion.store import save_converted
  from kvjax.models.lpips import LPIPS_PRESETS
  from kvjax.params import count_params
  if args.config not in LPIPS_PRESETS:
    raise ValueError(f"--config {args.config!r}: an LPIPS preset, one of {', '.join(LPIPS_PRESETS)}")
  _check_output(args.out, args.overwrite)
  start = time.perf_counter()
  policy = _policy(args)
  converted = convert_lpips(args.src, LPIPS_PRESETS[args.config], DTYPES[args.dtype], vgg=args.vgg, policy=policy)
  out = save_converted(converted, args.out, source=args.src, overwrite=args.overwrite)
  _warn(policy)
  sources = f"{args.src} + {args.vgg}" if args.vgg else args.src
  left_out = int(converted.extras.get(IGNORED_COUNT, 0))
  note = f", {left_out} classifier tensors left out" if left_out else ""
  print(f"converted {sources} ({count_params(converted.params):,} parameters, {args.config}, {args.dtype}{note}) "
        f"-> {out} in {time.perf_counter() - start:.1f} s")
  return 0


def _convert_all(args) -> int:
  from kvjax.conversion.release import convert_release
  from kvjax.quantization import parse_quantize
  quantize = {} if args.quantize is None else parse_quantize(args.quantize)
  start = time.perf_counter()
  policy = _policy(args)
  out = convert_release(args.src, args.out, DTYPES[args.dtype], t5_dir=args.t5, overwrite=args.overwrite,
                        policy=policy, quantize=quantize)
  _warn(policy)
  print(f"converted the release {args.src} ({args.dtype}) -> {out} in {time.perf_counter() - start:.1f} s")
  return 0


def _verify(args) -> int:
  from kvjax.parity import find_manifests, verify_fixture
  results = [r for manifest in find_manifests(args.fixtures) for r in verify_fixture(manifest)]
  for result in results:
    print(result.line())
  failed = sum(not r.ok for r in results)
  print(f"{len(results) - failed} passed, {failed} failed")
  return 1 if failed else 0


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from kvjax.checkpoints import CheckpointError
  from kvjax.conversion.state_dict import ConversionError
  try:
    run = {"verify": _verify, "all": _convert_all, "lpips": _convert_lpips}.get(args.command, _convert)
    return run(args)
  except (CheckpointError, ConversionError, OSError, ValueError) as e:  # OSError: missing, existing, unreadable
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
