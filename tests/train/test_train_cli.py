"""python -m train on 8 simulated devices over a prepared dataset: a run killed in the middle of writing a
checkpoint resumes from the last complete one and continues the same loss curve."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from data_testing_utils import moving_frames, write_video
from kvjax.data.prepare import PrepareConfig, prepare
from kvjax.data.transforms import TransformConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--mesh", "data=2,fsdp=2,tensor=2", "--steps", "6", "--checkpoint-every", "2",
          "--batch-size", "4"]

# Runs the program, but SIGKILLs the process when orbax is about to publish the checkpoint of step 4: its
# files are written, the final rename has not happened (the worst moment to die).
KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize_or_die(self, *args, **kwargs):
      if os.path.basename(str(self.get_final())) == "4":
        os.kill(os.getpid(), signal.SIGKILL)
      return await finalize(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
    from train.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_data")
  videos = root / "videos"
  videos.mkdir()
  for seed in range(4):
    write_video(videos / f"pan{seed}.mp4", moving_frames(240, 320, 72, seed=seed, pixels_per_frame=seed), 24)
  (root / "captions.jsonl").write_text("".join(
      json.dumps({"source": f"pan{seed}.mp4", "caption": f"a field panned at speed {seed}"}) + "\n" for seed in range(4)))
  config = PrepareConfig(transform=TransformConfig(target_short_side=64))
  summary = prepare(str(videos), str(root / "prepared"), captions_path=str(root / "captions.jsonl"), config=config,
                    progress=False, seed=0)
  assert summary.clips_kept == 4
  return root / "prepared"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # A persistent compilation cache: the killed and the resumed run reuse the first run's executables.
  cache = tmp_path_factory.mktemp("jax_cache")
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _train(args, env, script=None):
  command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "train", *args]
  return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def _metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


# The UNet recipe and the GAN recipe (generator, discriminator, both optimisers, EMA and LeCam state).
RUNS = {"keyframe-tiny": ["--config", "keyframe-tiny"],
        "video-movq-tiny": ["--config", "video-movq-tiny", "--lpips", "random", "--discriminator-start", "3"]}


@pytest.mark.parametrize("preset", sorted(RUNS))
def test_killed_mid_save_resumes_on_the_same_loss_curve(dataset, env, tmp_path, preset):
  # The README command on 8 simulated devices, killed while publishing the checkpoint of step 4 (saves are
  # asynchronous: training may have gone on meanwhile and logged steps after 4). Run again, it restores
  # step 2 and must recompute every logged step exactly, then go on to 6.
  workdir = tmp_path / "run"
  args = RUNS[preset] + COMMON + ["--data", str(dataset), "--workdir", str(workdir)]
  killed = _train(args, env, script=KILL_DURING_SAVE)
  assert killed.returncode == -9, killed.stderr[-3000:]
  before = _metrics(workdir)
  assert [m["step"] for m in before] == list(range(1, len(before) + 1)) and len(before) >= 4
  assert all(m["loss"] > 0 and m["grad_norm"] > 0 for m in before)
  saved = sorted(os.listdir(workdir / "checkpoints"))
  assert "2" in saved and "4" not in saved and any("tmp" in name for name in saved), saved

  resumed = _train(args, env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 2" in resumed.stderr
  after = _metrics(workdir)
  assert [m["step"] for m in after] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(after, before):  # same data position, same randomness, same arithmetic
    assert a == {**b, "seconds": a["seconds"]}
  assert len({m["loss"] for m in after}) == 6
  assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [2, 4, 6]
  if preset == "video-movq-tiny":
    # every GAN term is logged; the adversarial terms switch on at step 3
    assert {"rec_l1", "rec_perceptual", "discriminator_loss", "logits_real", "logits_fake", "adaptive_weight",
            "discriminator_grad_norm"} <= set(after[0])
    assert [m["discriminator_factor"] for m in after] == [0, 0, 0, 1, 1, 1]
    _export_and_sample(workdir, tmp_path, env)


def _export_and_sample(workdir, tmp_path, env):
  # The trained decoder exports to a converted folder (the EMA weights of the last checkpoint, exactly) that
  # the pipeline decodes with.
  import orbax.checkpoint as ocp
  from kvjax.conversion.store import load_converted
  out = tmp_path / "decoder"
  exported = subprocess.run([sys.executable, "-m", "train.export", str(workdir), str(out)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert "step 6 (EMA weights)" in exported.stderr
  saved = ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / "6" / "state"))
  model = load_converted(out)
  assert model.kind == "movq" and model.config.temporal
  flat_saved = jax.tree.leaves(saved["generator"]["ema_params"])
  assert len(flat_saved) == len(jax.tree.leaves(model.params))
  for a, b in zip(jax.tree.leaves(model.params), flat_saved):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  again = subprocess.run([sys.executable, "-m", "train.export", str(workdir), str(out)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 2 and "exists" in again.stderr
  sampled = subprocess.run([sys.executable, "-m", "sample", "a red circle moving right", "--video-movq", str(out),
                            "--out", str(tmp_path / "video.gif"), "--fps", "low"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert (tmp_path / "video.gif").is_file() and str(out) in sampled.stderr


def test_other_settings_in_the_same_workdir_are_refused(tmp_path, env):
  first = _train(["--config", "keyframe-tiny", "--workdir", str(tmp_path), "--steps", "0"], env)
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train(["--config", "keyframe-tiny", "--workdir", str(tmp_path), "--steps", "0", "--seed", "5"], env)
  assert second.returncode != 0 and "other settings (seed)" in second.stderr


def test_missing_dataset_is_named(tmp_path, env):
  result = _train(["--config", "keyframe-tiny", "--workdir", str(tmp_path), "--data", str(tmp_path / "nope")], env)
  assert result.returncode != 0 and "no such folder" in result.stderr


def test_precomputed_inputs_train_the_interpolation_unet(dataset, env, tmp_path):
  # Encoders run once (python -m train.precompute); training then reads latents and context, not frames.
  inputs = tmp_path / "inputs"
  made = subprocess.run([sys.executable, "-m", "train.precompute", "--config", "interpolation-tiny", "--data",
                         str(dataset), "--out", str(inputs), "--batch-size", "2"],
                        env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert made.returncode == 0, made.stderr[-3000:]
  assert "4 clips encoded" in made.stderr and not any(n.startswith(".") for n in os.listdir(tmp_path))
  args = ["--config", "interpolation-tiny", "--mesh", "fsdp=4,tensor=2", "--steps", "2", "--batch-size", "4",
          "--data", str(inputs), "--workdir", str(tmp_path / "run")]
  trained = _train(args, env)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2]
  other = _train(["--config", "keyframe-tiny", "--steps", "1", "--data", str(inputs), "--workdir",
                  str(tmp_path / "other")], env)
  assert other.returncode != 0 and "made for other settings" in other.stderr
