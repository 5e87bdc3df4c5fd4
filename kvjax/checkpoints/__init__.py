"""Safe, lazy readers for PyTorch and safetensors checkpoints: nothing is executed, tensors are mapped."""

from kvjax.checkpoints.lazy import CheckpointError, LazyTensor, flatten_state_dict
from kvjax.checkpoints.reader import read_checkpoint

__all__ = ["CheckpointError", "LazyTensor", "flatten_state_dict", "read_checkpoint"]
