"""Exports a training run to a converted-model folder, the format `python -m sample` and `convert verify` read.

  python -m train.export runs/decoder my_decoder/            # the latest checkpoint's EMA weights
  python -m train.export runs/decoder my_decoder/ --step 4000 --no-ema
  python -m sample "waves at sunset" --weights converted/ --video-movq my_decoder/ --out waves.mp4

MoVQ runs export the generator; UNet runs export the UNet with the null embedding the run used. A LoRA run
(`python -m train --lora-rank R`) exports its adapter alone, one safetensors file (OUT, e.g. style.safetensors;
PEFT-style keys, docs/training.md) that `python -m sample --lora OUT` merges into the UNet it was made for.
All or nothing: the folder (or file) appears complete or not at all.

  python -m train.export runs/style style.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kvjax.cli import program_name


DTYPES = ("float32", "bfloat16", "float16")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=program_name("train.export", __package__), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir", help="the --workdir of a `python -m train` run")
  p.add_argument("out", help="converted-model folder to write (a LoRA run: the adapter's .safetensors file)")
  p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  p.add_argument("--no-ema", action="store_true", help="export the raw weights, not their moving average")
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  p.add_argument("--dtype", choices=DTYPES, default="float32", help="the stored parameters' type (the null "
                 "embedding stays as trained)")
  return p


def export(workdir: str, out: str, step: int | None = None, ema: bool = True, overwrite: bool = False,
           dtype: str = "float32") -> str:
  """Writes the run's weights at `step` (default: latest) to `out`; returns a sentence saying what was written."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from kvjax.conversion.store import ConvertedModel, save_converted
  from kvjax.training.checkpointing import NULL_EMBEDDING, TrainCheckpoints, abstract_with_shardings
  from kvjax.training.train_config import TrainConfig, config_from_dict
  from kvjax.sharding import make_mesh
  from kvjax.training.trainer import make_trainer

  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{workdir}: not a training run (no config.json)")
  with open(config_path) as f:
    config = config_from_dict(TrainConfig, json.load(f))
  null_path = os.path.join(workdir, NULL_EMBEDDING)
  if not config.is_movq and not os.path.isfile(null_path):
    raise FileNotFoundError(f"{workdir}: no {NULL_EMBEDDING} (written by `python -m train` for UNet runs)")
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), async_save=False)
  steps = checkpoints.all_steps()
  if not steps:
    raise FileNotFoundError(f"{workdir}: no complete checkpoint")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ValueError(f"{workdir}: no checkpoint of step {step} (there are {', '.join(map(str, sorted(steps)))})")
  mesh = make_mesh("", jax.devices()[:1])
  null = None if config.is_movq else np.load(null_path, allow_pickle=False)
  trainer = make_trainer(config, mesh, null_embedding=null)
  state, _ = checkpoints.restore(step, abstract_with_shardings(trainer.abstract_state(), trainer.shardings))
  checkpoints.close()
  model_state = state.generator if config.is_movq else state
  use_ema = ema and model_state.ema_params is not None
  if config.lora.enabled:
    from kvjax.conversion.adapters import write_adapter
    size = write_adapter(out, model_state.ema_params if use_ema else model_state.params,
                         unet_config=config.model_config, lora=config.lora, pipeline=config.pipeline, step=step,
                         overwrite=overwrite)
    return (f"wrote {out}: the LoRA adapter (rank {config.lora.rank}, {','.join(config.lora.targets)}) of the "
            f"{config.model} UNet from {os.path.abspath(workdir)} step {step} "
            f"({'EMA' if use_ema else 'raw'} weights, float32), {size / 2**20:.2f} MiB")
  params = jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(dtype)),
                        model_state.ema_params if use_ema else model_state.params)
  extras = {} if config.is_movq else {"null_embedding": null}
  source = f"{os.path.abspath(workdir)} step {step} ({'EMA' if use_ema else 'raw'} weights, {dtype})"
  save_converted(ConvertedModel(config.model_config.kind, config.model_config, params, extras), out,
                 source=source, overwrite=overwrite)
  return f"wrote {out}: {config.model} from {source}"


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    print(export(args.workdir, args.out, args.step, ema=not args.no_ema, overwrite=args.overwrite,
                 dtype=args.dtype), file=sys.stderr)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
