"""Conversion of the official PyTorch checkpoints into kvjax parameter trees."""
