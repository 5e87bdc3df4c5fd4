"""Training programs: `python -m train` (sharded UNet training) and `python -m train.prepare_data` (video
data preparation into a tfds dataset)."""
