"""`python -m train.demo`'s plan and its --keep folder (a recipe longer than one sitting continues elsewhere).

No training here: the stages' commands are the README's, tested where they live; this checks the plan's
order and that kept outputs are taken only for the same recipe.
"""

import json
import os

from train.demo import RECIPE, _keep, _recipe, _take_kept, finished_stages, stages


def _model_stage(plan, name):
  return next(s for s in plan if s.name == name)


def test_the_plan_runs_every_stage_after_its_inputs():
  plan = stages("/out", 600, 0)
  names = [s.name for s in plan]
  assert set(names) == {"videos", "prepared", "init", "image_movq", "latents", "keyframe_image", "keyframe",
                        "keyframe_motion", "keyframe_first", "keyframe_temporal", "keyframe_temporal_more",
                        "keyframe_place", "keyframe_settle", "interpolation_inputs", "interpolation",
                        "video_movq", "video_movq_decoder", "video_movq_decoder_more", "video_movq_decoder_long",
                        "assemble", "check"}
  for stage in plan:
    assert all(names.index(a) < names.index(stage.name) for a in stage.after), stage.name
  # Every model stage exports float16, the shipped form, which later stages and --keep folders hold.
  for stage in plan:
    if stage.output is not None:
      assert stage.commands[-1][0] == "train.export" and stage.commands[-1][-2:] == ("--dtype", "float16")


def test_a_kept_output_is_taken_by_another_run_of_the_same_recipe_only(tmp_path):
  first, second, keep = (str(tmp_path / name) for name in ("first", "second", "keep"))
  plan = stages(first, 600, 0)
  stage = _model_stage(plan, "image_movq")
  os.makedirs(stage.output)
  with open(os.path.join(stage.output, "config.json"), "w") as f:
    f.write("{}")
  _keep(stage, first, keep, plan)
  recipe = json.load(open(os.path.join(keep, "image_movq", RECIPE)))
  assert first not in json.dumps(recipe)  # OUT is written as "OUT": the folder may move
  assert recipe["presets"]["demo-image-movq"]["training"]["total_steps"] > 0
  assert "init" in recipe["after"] and "videos" in recipe["after"]["init"]["after"]

  again = stages(second, 600, 0)
  assert _take_kept(_model_stage(again, "image_movq"), second, keep, again)
  assert sorted(os.listdir(_model_stage(again, "image_movq").output)) == ["config.json"]
  # Another world (more videos) or seed is another recipe: trained again, not taken.
  other = stages(str(tmp_path / "third"), 900, 0)
  assert not _take_kept(_model_stage(other, "image_movq"), str(tmp_path / "third"), keep, other)
  # Stages without a model output are never kept.
  assert not _take_kept(_model_stage(again, "videos"), second, keep, again)


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


def test_a_finished_stage_that_another_recipe_made_is_an_error_not_reused(tmp_path, capsys):
  from train import demo
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


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
  from train import demo
  for flags, message in ((["--videos", "2"], "--videos 2"), (["--parallel", "0"], "--parallel 0"),
                         (["--max-steps", "0"], "--max-steps 0: give at least 1")):
    assert demo.main([str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
  assert not (tmp_path / "out").exists()


def test_a_kept_output_names_only_the_models_its_run_reads(monkeypatch):
  """A new interpolation UNet leaves the keyframe and MoVQ stages' kept outputs valid, and the other way."""
  import dataclasses

  from kvjax.pipeline import pipeline_config
  plan = stages("/out", 600, 0)
  before = {s.name: _recipe(s, "/out", plan) for s in plan if s.output is not None}
  demo = pipeline_config.PIPELINE_PRESETS["demo"]
  wider = dataclasses.replace(demo, interpolation=dataclasses.replace(demo.interpolation, model_channels=96))
  monkeypatch.setitem(pipeline_config.PIPELINE_PRESETS, "demo", wider)
  after = {s.name: _recipe(s, "/out", plan) for s in plan if s.output is not None}
  assert [name for name in before if before[name] != after[name]] == ["interpolation"]
