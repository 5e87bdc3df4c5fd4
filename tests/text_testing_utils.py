"""Reference-layout text projection heads made with PyTorch (a test-only dependency)."""

import torch

from kvjax import model_configs
from kvjax.models.text_projection import HEADS

PROJECTIONS_CFG = model_configs.TEXT_PROJECTIONS_TINY


def torch_heads(seed=0, config=PROJECTIONS_CFG):
  """Per head nn.Sequential(Linear(in, ctx, bias=False), LayerNorm(ctx)), affine parameters off their init."""
  torch.manual_seed(seed)
  heads = {}
  for name in HEADS:
    head = torch.nn.Sequential(torch.nn.Linear(config.in_dim, config.context_dim, bias=False),
                               torch.nn.LayerNorm(config.context_dim))
    with torch.no_grad():
      head[1].weight.normal_(1.0, 0.2)
      head[1].bias.normal_(0.0, 0.2)
    heads[name] = head.eval()
  return heads


def save_projections(path, heads):
  """`t5_projections.pt` as released: {head: state dict}."""
  torch.save({name: head.state_dict() for name, head in heads.items()}, path)
