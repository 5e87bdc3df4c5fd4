import pytest

from data_testing_utils import make_source_folder


@pytest.fixture(scope="session")
def source_folder(tmp_path_factory):
  """The rule videos (see data_testing_utils.make_source_folder), made once per session."""
  folder = tmp_path_factory.mktemp("videos")
  make_source_folder(folder)
  return folder


# Small limits so that tiny videos exercise every rule: a 3 s maximum clip, a 120 px short side.
TEST_MAX_CLIP_SECONDS = 3.0
TEST_SHORT_SIDE = 120


@pytest.fixture(scope="session")
def test_config():
  from kvjax.data import prepare, scenes, transforms
  return prepare.PrepareConfig(scenes=scenes.SceneConfig(max_clip_seconds=TEST_MAX_CLIP_SECONDS),
                               transform=transforms.TransformConfig(target_short_side=TEST_SHORT_SIDE))


@pytest.fixture(scope="session")
def prepared(source_folder, tmp_path_factory, test_config):
  """(summary, output folder, captions path) of one run over the rule videos, with a captions file."""
  import json
  from kvjax.data import prepare, sources
  out = tmp_path_factory.mktemp("prepared")
  captions = out / "captions.jsonl"
  lines = [{"clip_id": sources.clip_id_for("cut.mp4", 0), "caption": "the first scene"},
           {"source": "motion/fast.mp4", "caption": "a fast pan"},
           {"long.mp4": "a long slow pan"}]
  captions.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
  summary = prepare.prepare(str(source_folder), str(out / "out"), captions_path=str(captions), config=test_config,
                            progress=False, seed=0)
  return summary, out / "out"
