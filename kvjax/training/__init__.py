"""Sharded training of the video UNets: meshes, partitioning, optimiser, train steps, checkpoints."""
