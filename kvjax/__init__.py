"""kvjax: Kandinsky Video 1.1 in JAX/Flax."""

__version__ = "0.1.0"
