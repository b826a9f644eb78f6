"""quantbench: choose how to quantize a language model, with numbers."""

__version__ = "0.1.0"
