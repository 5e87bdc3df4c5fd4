"""python -m train with the GAN recipe (generator, discriminator, both optimisers, EMA and LeCam state) on 8
simulated devices over a prepared dataset: killed mid-save it resumes on the same curve of every loss
term; the run exports to a converted decoder that `python -m sample` decodes with."""

import subprocess
import sys

import jax
import numpy as np

from train_testing_utils import REPO, killed_mid_save_resumes_on_the_same_loss_curve


def test_gan_run_resumes_exports_and_samples(dataset, env, tmp_path, capsys):
  workdir = tmp_path / "run"
  after = killed_mid_save_resumes_on_the_same_loss_curve(
      ["--config", "video-movq-tiny", "--lpips", "random", "--discriminator-start", "3"], dataset, env, workdir)
  # every GAN term is logged; the adversarial terms switch on at step 3
  assert {"rec_l1", "rec_perceptual", "discriminator_loss", "logits_real", "logits_fake", "adaptive_weight",
          "discriminator_grad_norm"} <= set(after[0])
  assert [m["discriminator_factor"] for m in after] == [0, 0, 0, 1, 1, 1]
  _export_and_sample(workdir, tmp_path, env, capsys)


def _export_and_sample(workdir, tmp_path, env, capsys):
  # The trained decoder exports to a converted folder (the EMA weights of the last checkpoint, exactly) that
  # the pipeline decodes with.
  # The export runs in this process (`python -m train.export` is its main and nothing more): a new process
  # would only import JAX again.
  import orbax.checkpoint as ocp
  from kvjax.conversion.store import load_converted
  from train.export import main as export_main
  out = tmp_path / "decoder"
  capsys.readouterr()
  assert export_main([str(workdir), str(out)]) == 0
  assert "step 6 (EMA weights, float32)" in capsys.readouterr().err
  saved = ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / "6" / "state"))
  model = load_converted(out)
  assert model.kind == "movq" and model.config.temporal
  flat_saved = jax.tree.leaves(saved["generator"]["ema_params"])
  assert len(flat_saved) == len(jax.tree.leaves(model.params))
  for a, b in zip(jax.tree.leaves(model.params), flat_saved):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert export_main([str(workdir), str(out)]) == 2
  assert "exists" in capsys.readouterr().err
  # The size and steps of tests/sample/test_sample_cli.py's random-weights run: the same programs (weights are
  # their inputs), which the suite's persistent compilation cache then holds for whichever runs second.
  sampled = subprocess.run([sys.executable, "-m", "sample", "a red circle moving right", "--weights", "random",
                            "--video-movq", str(out), "--width", "32", "--height", "32", "--steps", "2", "2", "2",
                            "--out", str(tmp_path / "video.gif"), "--fps", "low"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert (tmp_path / "video.gif").is_file() and str(out) in sampled.stderr


