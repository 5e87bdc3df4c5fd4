"""Video data preparation (kvjax.data.prepare, `python -m train.prepare_data`) into a tfds ArrayRecord
dataset (kvjax.data.dataset), and the grain loader that reads it for training (kvjax.data.loader)."""
