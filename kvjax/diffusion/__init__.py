"""Noise schedules and samplers as pure functions over small arrays (jit- and scan-friendly)."""
