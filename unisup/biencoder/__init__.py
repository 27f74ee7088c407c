"""The two-tower bi-encoder: towers, losses, training loop, export."""

from unisup.biencoder.tower import Tower, load_biencoder, save_biencoder

__all__ = ["Tower", "load_biencoder", "save_biencoder"]
