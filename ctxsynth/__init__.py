"""Context synthesis for long-context instruction tuning (Zhu et al., arXiv 2502.15592)."""

__version__ = "0.1.0"
