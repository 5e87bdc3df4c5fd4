"""python -m train on simulated devices over a prepared dataset: a run killed in the middle of writing a
checkpoint resumes from the last complete one and continues the same loss curve; bad settings are named.
(The MoVQ recipe's run, export and sampling: test_train_movq_cli.py.)"""

import json
import os
import subprocess
import sys

from PIL import Image

from train_testing_utils import REPO, killed_mid_save_resumes_on_the_same_loss_curve, read_metrics as _metrics
from train_testing_utils import tensorboard_points
from train_testing_utils import run_train as _train

# A LoRA run (adapters on the default groups, the UNet frozen): resume, validation and export cover it.
KEYFRAME_RUN = ["--config", "keyframe-tiny-two-level", "--mesh", "fsdp=2"]
LORA_RUN = ["--lora-rank", "2", "--lora-targets", "cross_attention,temporal", "--set", "lora.trigger_words=zigzag"]


def test_killed_mid_save_resumes_on_the_same_loss_curve(dataset, env, tmp_path):
  # Two devices, FSDP: the checkpoint is sharded; the GAN run's kill test uses the 8-device mesh, and the
  # sharded steps' equality with one device is tested in-process (compiling 8-way costs minutes here). The
  # two-level UNet. The resumed run reads the killed run's step from the persistent compilation cache.
  # The resumed run also samples validation videos at steps 3 and 6: the steps after 3 must still equal the
  # killed run's (which had none), so validation leaves the trajectory alone.
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("# one prompt a line\na field panned at speed 2\n")
  workdir = tmp_path / "run"
  killed_mid_save_resumes_on_the_same_loss_curve(
      KEYFRAME_RUN[:2] + LORA_RUN, dataset, env, workdir, mesh=KEYFRAME_RUN[3], devices=2,
      resumed_args=["--validation-prompts", str(prompts), "--validation-every", "3"])
  for step in (3, 6):
    folder = workdir / "validation" / f"step_{step}"
    assert sorted(os.listdir(folder)) == ["00-a-field-panned-at-speed-2.gif", "prompts.txt"]
    with Image.open(folder / "00-a-field-panned-at-speed-2.gif") as gif:
      assert gif.size == (64, 64) and gif.n_frames == 12  # the run's frame size; the 12 base frames
  assert (workdir / "validation" / "step_3" / "prompts.txt").read_text() == "00 seed 0: a field panned at speed 2\n"
  assert not any(name.startswith(".") for name in os.listdir(workdir / "validation"))
  images = tensorboard_points(workdir)["validation/00-a-field-panned-at-speed-2"]
  assert sorted(images) == [3, 6] and (images[3].width, images[3].height) == (64, 64)
  assert images[3].encoded_image_string == (workdir / "validation/step_3/00-a-field-panned-at-speed-2.gif").read_bytes()
  # the run's export is its adapter alone, a file of kilobytes with PEFT keys and the run's metadata
  from kvjax.checkpoints.safetensors_file import read_safetensors_with_metadata
  from train.export import main as export
  assert export([str(workdir), str(tmp_path / "zigzag.safetensors")]) == 0
  tensors, meta = read_safetensors_with_metadata(str(tmp_path / "zigzag.safetensors"))
  assert (tmp_path / "zigzag.safetensors").stat().st_size < 200_000
  assert "down_samples.1.resnet_attn_blocks.0.1.attention.to_key.lora_B.weight" in tensors
  assert any(".temporal_resnet_blocks.3.2.lora_A.weight" in name for name in tensors)
  assert {k: meta[k] for k in ("base_kind", "base_pipeline", "rank", "alpha", "targets", "trigger_words", "step")} == {
      "base_kind": "keyframe_unet", "base_pipeline": "tiny-two-level", "rank": "2", "alpha": "2.0",
      "targets": "cross_attention,temporal", "trigger_words": "zigzag", "step": "6"}


def test_other_settings_in_the_same_workdir_are_refused(tmp_path, env):
  # --set reaches the run's settings and config.json; a resume with another value is refused naming it
  run = ["--config", "keyframe-tiny", "--workdir", str(tmp_path), "--steps", "0"]
  first = _train([*run, "--set", "optimizer.learning_rate=3e-4", "--set", "keyframe.high_noise_fraction=0.5"], env)
  assert first.returncode == 0, first.stderr[-3000:]
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["optimizer"]["learning_rate"] == 3e-4 and saved["keyframe"]["high_noise_fraction"] == 0.5
  assert not list(tmp_path.glob("events.out.tfevents.*"))  # no step, no event file
  second = _train([*run, "--seed", "5", "--set", "optimizer.learning_rate=1e-3", "--set",
                   "keyframe.high_noise_fraction=0.5"], env)
  assert second.returncode == 2 and "other settings (optimizer.learning_rate, seed)" in second.stderr


def test_refusals_are_one_line_with_exit_2_before_any_work(tmp_path, capsys):
  from train.__main__ import main
  (tmp_path / "a-file").write_text("")
  empty, many, one = tmp_path / "empty.txt", tmp_path / "many.txt", tmp_path / "one.txt"
  empty.write_text("# only a comment\n\n")
  many.write_text("".join(f"prompt {i}\n" for i in range(17)))
  one.write_text("a red square\n")
  base = ["--config", "keyframe-tiny", "--data", "synthetic", "--workdir", str(tmp_path / "run")]
  for flags, message in ((["--data", str(tmp_path / "nope")], "no such folder"),
                         (["--mesh", "data=3"], "--mesh data=3: mesh 'data=3' has 3 devices"),
                         (["--steps", "-1"], "--steps -1"), (["--data-workers", "-1"], "--data-workers -1"),
                         (["--batch-size", "0"], "global_batch_size"),
                         (["--workdir", str(tmp_path / "a-file" / "run")], "is a file, not a folder"),
                         (["--init", str(tmp_path / "nope")], "not a converted model folder"),
                         (["--set", "optimizer.learnig_rate=1e-3"],
                          "--set optimizer.learnig_rate: TrainConfig has no such field; did you mean "
                          "optimizer.learning_rate?"),
                         (["--set", "seed=five"], "--set seed='five': expected an integer"),
                         (["--set", "resolution=60,60"], "--set resolution=60,60: TrainConfig.resolution (60, 60)"),
                         (["--train-scope", "decoder"], "--config keyframe-tiny: --train-scope apply to the MoVQ"),
                         (["--validation-prompts", str(tmp_path / "nope.txt")],
                          f"--validation-prompts {tmp_path / 'nope.txt'}: no such file"),
                         (["--validation-prompts", str(empty)], f"--validation-prompts {empty}: no prompts"),
                         (["--validation-prompts", str(many)], f"--validation-prompts {many}: 17 prompts; at most 16"),
                         (["--validation-prompts", str(many), "--config", "image-movq-tiny"],
                          "applies to UNet runs (keyframe, interpolation), not to image movq runs"),
                         (["--validation-every", "5"], "--validation-every 5: give --validation-prompts FILE too"),
                         (["--validation-prompts", str(one), "--validation-every", "0"], "--validation-every 0"),
                         (["--lora-targets", "temporal"], "--lora-targets temporal: give --lora-rank R too"),
                         (["--lora-rank", "2", "--lora-targets", "temporal,vae"],
                          "--lora-targets temporal,vae: no LoRA target group vae; choose from self_attention"),
                         (["--lora-rank", "-1"], "LoraConfig: rank and alpha must be >= 0"),
                         (["--lora-rank", "2", "--config", "image-movq-tiny"],
                          "LoRA adapters apply to the UNets (keyframe, interpolation), not to image movq runs"),
                         (["--set", "lora.dropout=1.5"], "LoraConfig.dropout must be in [0, 1)")):
    assert main([*base, *flags]) == 2, flags
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err, (message, err)
  assert not (tmp_path / "run").exists()


def test_precomputed_inputs_train_the_interpolation_unet(dataset, env, tmp_path):
  # Encoders run once (python -m train.precompute); training then reads latents and context, not frames.
  inputs = tmp_path / "inputs"
  # Made for --set's of the preset (recorded in its meta.json), which the training run must give too. The
  # two-level UNet: its train step compiles faster than the preset's three levels (docs/testing.md), and the
  # encoders (what the inputs hold) are the same.
  settings = ["--set", "clip_start=first", "--set", "pipeline=tiny-two-level"]
  made = subprocess.run([sys.executable, "-m", "train.precompute", "--config", "interpolation-tiny", "--data",
                         str(dataset), "--out", str(inputs), "--batch-size", "2", *settings],
                        env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert made.returncode == 0, made.stderr[-3000:]
  assert "4 clips encoded" in made.stderr and not any(n.startswith(".") for n in os.listdir(tmp_path))
  assert json.loads((inputs / "meta.json").read_text())["clip_start"] == "first"
  # One device (sharded steps are tested elsewhere; this is about the inputs): a quarter of the compile.
  args = ["--config", "interpolation-tiny", "--steps", "2", "--batch-size", "4", *settings,
          "--data", str(inputs), "--workdir", str(tmp_path / "run")]
  trained = _train(args, {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2]
  other = _train(["--config", "keyframe-tiny", "--steps", "1", "--data", str(inputs), "--workdir",
                  str(tmp_path / "other")], env)
  assert other.returncode != 0 and "made for other settings" in other.stderr
