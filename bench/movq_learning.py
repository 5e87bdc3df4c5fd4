"""Does the MoVQ-GAN trainer teach the temporal decoder anything? A CPU run on moving shapes, with README
commands only, then a table.

  1. python -m train --config image-movq-tiny --data shapes ...        (the image autoencoder)
  2. python -m train.export (image) -> python -m train --config video-movq-tiny --weights IMAGE ...
     (the temporal decoder from the image MoVQ, temporal layers at identity; encoder frozen)
  3. on held-out clips: reconstruction error and temporal flicker of the image decoder (each frame alone,
     which is what the video decoder is at step 0) against the trained video decoder (clips of T frames).

Flicker: the mean absolute change between consecutive decoded frames, against the source's own (|d| per
pixel), and the error of those changes, mean |d(decoded) - d(source)|.

  python bench/movq_learning.py --workdir runs/movq_learning [--image-steps 600 --video-steps 300]

Re-running resumes the runs from their checkpoints (and skips finished ones).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args: list[str]) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, *args], cwd=REPO, check=True)
  return time.perf_counter() - start


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def evaluate(image_dir: str, video_dir: str, resolution, num_frames: int, clips: int = 32, seed: int = 12345):
  import jax
  import jax.numpy as jnp

  from kvjax.conversion.store import load_converted
  from kvjax.data.shapes import ShapeClips
  from kvjax.models.movq import MoVQ

  image, video = load_converted(image_dir), load_converted(video_dir)
  frames = next(ShapeClips(clips, num_frames, resolution, seed))["frames"]  # held out: another seed
  x = jnp.asarray(frames, jnp.float32) / 255 * 2 - 1
  flat = x.reshape(-1, *x.shape[2:])

  @jax.jit
  def image_decode(params):
    model = MoVQ(image.config)
    return model.apply({"params": params}, model.apply({"params": params}, flat, method="encode"), 1,
                       method="decode")

  @jax.jit
  def video_decode(params):
    model = MoVQ(video.config)
    return model.apply({"params": params}, model.apply({"params": params}, flat, method="encode"), num_frames,
                       method="decode")

  def scores(decoded):
    decoded = jnp.clip(decoded, -1, 1).reshape(x.shape)
    change = lambda v: jnp.abs(v[:, 1:] - v[:, :-1])
    return {"l1": float(jnp.mean(jnp.abs(decoded - x))),
            "psnr": float(10 * jnp.log10(4 / jnp.mean(jnp.square(decoded - x)))),
            "frame_change": float(jnp.mean(change(decoded))), "source_change": float(jnp.mean(change(x))),
            "change_error": float(jnp.mean(jnp.abs((decoded[:, 1:] - decoded[:, :-1]) - (x[:, 1:] - x[:, :-1]))))}

  return {"image decoder (start)": scores(image_decode(image.params)),
          "video decoder (trained)": scores(video_decode(video.params))}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/movq_learning")
  p.add_argument("--image-steps", type=int, default=600)
  p.add_argument("--video-steps", type=int, default=300)
  p.add_argument("--resolution", default="32x32")
  p.add_argument("--num-frames", type=int, default=4)
  p.add_argument("--lpips", help="LPIPS weights (default: no perceptual term)")
  p.add_argument("--train-scope", default="temporal", choices=("temporal", "decoder"))
  p.add_argument("--video-learning-rate", type=float, help="default: the preset's")
  args = p.parse_args(argv)
  w = lambda *parts: os.path.join(os.path.abspath(args.workdir), *parts)
  lpips = ["--lpips", args.lpips] if args.lpips else []
  common = ["--data", "shapes", "--resolution", args.resolution, "--log-every", "25", "--checkpoint-every", "100"]
  seconds = {}
  seconds["image"] = _run(["-m", "train", "--config", "image-movq-tiny", "--workdir", w("image"),
                           "--steps", str(args.image_steps), "--num-frames", "2", *common, *lpips])
  _run(["-m", "train.export", w("image"), w("image_export"), "--overwrite"])
  seconds["video"] = _run(["-m", "train", "--config", "video-movq-tiny", "--workdir", w("video"), "--weights",
                           w("image_export"), "--steps", str(args.video_steps), "--num-frames", str(args.num_frames),
                           "--train-scope", args.train_scope, *common, *lpips,
                           *(["--learning-rate", str(args.video_learning_rate)] if args.video_learning_rate else [])])
  _run(["-m", "train.export", w("video"), w("video_export"), "--overwrite"])

  height, width = map(int, args.resolution.split("x"))
  results = evaluate(w("image_export"), w("video_export"), (height, width), args.num_frames)
  curves = {name: _metrics(w(name)) for name in ("image", "video")}
  print(f"\nMoVQ learning on moving shapes ({args.resolution}, clips of {args.num_frames} frames, CPU; video "
        f"recipe trains: {args.train_scope})")
  for name, rows in curves.items():
    picks = [rows[0], rows[len(rows) // 2], rows[-1]]
    print(f"  {name} run: " + ", ".join(f"step {r['step']}: rec_l1 {r['rec_l1']:.4f}" for r in picks) +
          f" ({seconds[name]:.0f} s this invocation)")
  header = ("decoder", "L1", "PSNR dB", "|d decoded|", "|d source|", "|d dec - d src|")
  print("  " + " | ".join(f"{h:>24}" if i == 0 else f"{h:>15}" for i, h in enumerate(header)))
  for name, s in results.items():
    values = (s["l1"], s["psnr"], s["frame_change"], s["source_change"], s["change_error"])
    print("  " + f"{name:>24} | " + " | ".join(f"{v:15.4f}" for v in values))
  with open(w("results.json"), "w") as f:
    json.dump({"evaluation": results, "curves": curves}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
