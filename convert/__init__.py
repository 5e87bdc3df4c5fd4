"""`python -m convert`: official PyTorch checkpoints -> kvjax (orbax) checkpoints, and parity checks."""
