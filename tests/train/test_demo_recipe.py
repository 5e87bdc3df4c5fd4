"""`python -m train.demo`'s plan: its recipe, and which stages take the shipped weights' models instead of training.

No training here: the stages' commands are the docs', tested where they live; this checks the plan's order,
that the shipped weights record this recipe, and that only a changed stage and what it needs run.
"""

import json
import os

import pytest

from kvjax.demo import DEMO_WEIGHTS
from kvjax.training.train_config import TrainConfig
from train import demo, demo_recipe
from train.demo import SHIPPED, actions, finished_stages, read_record, shipped_recipe, stages

KEYFRAME_CHAIN = {"keyframe_image", "keyframe", "keyframe_motion", "keyframe_first", "keyframe_temporal",
                  "keyframe_temporal_more", "keyframe_place", "keyframe_settle"}
DECODER_CHAIN = {"video_movq", "video_movq_decoder", "video_movq_decoder_more", "video_movq_decoder_long"}


def _doing(plan, out, record, what):
  return {name for name, action in actions(plan, out, record).items() if action == what}


def test_the_plan_runs_every_stage_after_its_inputs():
  plan = stages("/out", 600, 0)
  names = [s.name for s in plan]
  assert set(names) == {"videos", "prepared", "init", "image_movq", "latents", "interpolation_inputs",
                        "interpolation", "assemble", "check"} | KEYFRAME_CHAIN | DECODER_CHAIN
  for stage in plan:
    assert all(names.index(a) < names.index(stage.name) for a in stage.after), stage.name
  # Every model stage exports float16, the shipped form, which later stages start from.
  for stage in plan:
    if stage.output is not None:
      assert stage.commands[-1][0] == "train.export" and stage.commands[-1][-2:] == ("--dtype", "float16")


def test_every_training_stage_is_a_library_preset_with_overrides():
  plan = {s.name: s for s in stages("/out", 600, 0)}
  assert set(demo_recipe.TRAINING) == {name for name, s in plan.items() if s.output is not None}
  for name, (base, overrides) in demo_recipe.TRAINING.items():
    config = demo.train_config(name)
    assert isinstance(config, TrainConfig) and config.pipeline == "demo", name
    command = plan[name].commands[0]
    assert command[:3] == ("train", "--config", base) and list(command[4:4 + 2 * len(overrides):2]) == list(overrides)


def test_the_shipped_weights_record_this_recipe():
  """A change to a demo stage's settings comes with new weights (`python -m train.demo OUT --install`)."""
  plan = stages("/out", 600, 0)
  assert read_record(DEMO_WEIGHTS) == shipped_recipe(plan, "/out")["stages"]


def test_an_unchanged_recipe_takes_every_shipped_model_and_trains_nothing():
  plan = stages("/out", 600, 0)
  record = read_record(DEMO_WEIGHTS)
  assert _doing(plan, "/out", record, "take") == set(SHIPPED)
  assert _doing(plan, "/out", record, "run") == {"assemble", "check"}
  # --from-scratch (no record), another world or a smoke run's --max-steps: every stage runs.
  for plan, record in ((plan, {}), (stages("/out", 900, 0), record), (stages("/out", 600, 0, 5), record)):
    assert _doing(plan, "/out", record, "run") == {s.name for s in plan}


def test_a_changed_stage_runs_with_the_stages_it_reads_and_the_others_are_taken(monkeypatch):
  record = read_record(DEMO_WEIGHTS)
  base, overrides = demo_recipe.TRAINING["interpolation"]
  monkeypatch.setitem(demo_recipe.TRAINING, "interpolation", (base, (*overrides, "optimizer.learning_rate=0.0005")))
  plan = stages("/out", 600, 0)
  # Its inputs are encoded again from the shipped MoVQ and latents' map, and init runs again: the interpolation
  # UNet starts from its random weights, which do not ship.
  assert _doing(plan, "/out", record, "run") == {"videos", "prepared", "init", "interpolation_inputs",
                                                  "interpolation", "assemble", "check"}
  assert _doing(plan, "/out", record, "take") == {"image_movq", "latents", "keyframe_settle",
                                                   "video_movq_decoder_long"}
  # A changed keyframe stage trains its chain from the first stage (intermediate models do not ship).
  monkeypatch.undo()
  base, overrides = demo_recipe.TRAINING["keyframe_place"]
  monkeypatch.setitem(demo_recipe.TRAINING, "keyframe_place", (base, (*overrides, "total_steps=2500")))
  plan = stages("/out", 600, 0)
  assert _doing(plan, "/out", record, "run") == {"videos", "prepared", "init", "assemble", "check"} | KEYFRAME_CHAIN
  # A changed decoder stage needs no init: only the text encoder and tokenizer of init ship, which is all
  # that its stages read.
  monkeypatch.undo()
  base, overrides = demo_recipe.TRAINING["video_movq_decoder_long"]
  monkeypatch.setitem(demo_recipe.TRAINING, "video_movq_decoder_long", (base, (*overrides, "seed=1")))
  plan = stages("/out", 600, 0)
  assert _doing(plan, "/out", record, "run") == {"videos", "prepared", "assemble", "check"} | DECODER_CHAIN
  assert _doing(plan, "/out", record, "take") == set(SHIPPED) - {"video_movq_decoder_long"}


def test_a_recipe_names_only_the_models_its_run_reads(monkeypatch):
  """A new interpolation UNet leaves the keyframe and MoVQ stages as recorded, and the other way."""
  import dataclasses

  from kvjax.pipeline import pipeline_config
  plan = stages("/out", 600, 0)
  before = {s.name: demo._recipe(s, "/out", plan) for s in plan}
  pipeline = pipeline_config.PIPELINE_PRESETS["demo"]
  wider = dataclasses.replace(pipeline, interpolation=dataclasses.replace(pipeline.interpolation, model_channels=96))
  monkeypatch.setitem(pipeline_config.PIPELINE_PRESETS, "demo", wider)
  after = {s.name: demo._recipe(s, "/out", plan) for s in plan}
  assert [name for name in before if before[name] != after[name]] == ["interpolation_inputs", "interpolation",
                                                                       "assemble", "check"]


def test_taken_models_assemble_into_the_shipped_weights_byte_for_byte(tmp_path):
  out = str(tmp_path)
  plan = stages(out, 600, 0)
  for stage in plan:
    if stage.name in SHIPPED:
      demo._take(stage, out, DEMO_WEIGHTS)
  demo.assemble(out, plan)

  def files(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names}

  weights = os.path.join(out, "weights")
  assert files(weights) == files(DEMO_WEIGHTS)
  for name in files(DEMO_WEIGHTS):
    with open(os.path.join(weights, name), "rb") as a, open(os.path.join(DEMO_WEIGHTS, name), "rb") as b:
      assert a.read() == b.read(), name


def test_a_stage_new_to_the_recipe_runs_again_every_stage_after_it(tmp_path):
  out = str(tmp_path)
  plan = stages(out, 600, 0)
  for i, stage in enumerate(plan):
    path = os.path.join(out, f"{stage.name}.done")
    open(path, "w").close()
    os.utime(path, (1000 + i, 1000 + i))
  assert finished_stages(plan, out) == ({s.name for s in plan}, [])
  os.remove(os.path.join(out, "keyframe_temporal.done"))  # as after an update that added the stage
  after = {"keyframe_temporal_more", "keyframe_place", "keyframe_settle", "assemble", "check"}
  assert finished_stages(plan, out)[0] == {s.name for s in plan} - {"keyframe_temporal"} - after
  open(os.path.join(out, "keyframe_temporal.done"), "w").close()  # finished now: later than the markers after it
  assert finished_stages(plan, out)[0] == {s.name for s in plan} - after


def test_a_taken_stage_counts_as_finished_only_where_the_plan_takes_it(tmp_path):
  out = str(tmp_path)
  plan = stages(out, 600, 0)
  stage = next(s for s in plan if s.name == "video_movq_decoder_long")
  with open(os.path.join(out, f"{stage.name}.done"), "w") as f:
    json.dump({"taken": True, "recipe": demo._recipe(stage, out, plan)}, f)
  skip_before = {"prepared": "skip", "video_movq_decoder_more": "skip"}
  assert stage.name in finished_stages(plan, out, {**skip_before, stage.name: "take"})[0]
  assert stage.name not in finished_stages(plan, out, {**skip_before, stage.name: "run"})[0]  # --from-scratch


def test_a_finished_stage_that_another_recipe_made_is_an_error_not_reused(tmp_path, capsys):
  out = str(tmp_path)
  plan = stages(out, 600, 0)
  for i, stage in enumerate(plan[:3]):  # videos, prepared, init: marked as a run of this recipe marks them
    with open(os.path.join(out, f"{stage.name}.done"), "w") as f:
      json.dump({"seconds": 1, "recipe": demo._recipe(stage, out, plan)}, f)
    os.utime(os.path.join(out, f"{stage.name}.done"), (1000 + i, 1000 + i))
  assert finished_stages(plan, out) == ({"videos", "prepared", "init"}, [])
  other = stages(out, 900, 0)  # more videos: every stage is another recipe's
  assert finished_stages(other, out)[1] == ["videos", "prepared", "init"]
  assert demo.main([out, "--videos", "900"]) == 2
  assert "was made by another recipe for stage videos, prepared, init" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["--videos", "2"], "--videos 2"), (["--parallel", "0"], "--parallel 0"),
                                            (["--max-steps", "0"], "--max-steps 0: give at least 1")])
def test_bad_options_are_refused_before_any_work(tmp_path, capsys, flags, message):
  assert demo.main([str(tmp_path / "out"), *flags]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1
  assert not (tmp_path / "out").exists()
