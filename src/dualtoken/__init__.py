"""DualToken: a unified visual tokenizer (pixel + semantic codebooks) and the pipeline around it."""

__version__ = "0.1.0"
