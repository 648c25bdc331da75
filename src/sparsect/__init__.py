"""sparsect: sparse-view CT reconstruction with semantically-guided UNets."""

__version__ = "0.1.0"
