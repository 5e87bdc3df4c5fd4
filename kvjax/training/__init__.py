"""Sharded training of the video UNets and MoVQs: configs and their overrides, optimiser, train steps, the
train loop, checkpoints and a run in a workdir (kvjax.training.run, what `python -m train` calls)."""
