"""unisup: unified supervision for first-stage sponsored-search retrieval."""

__version__ = "0.1.0"
