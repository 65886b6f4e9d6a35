"""LiMAML: per-user personalization of deep recommender models by meta-learning (TFX)."""

__version__ = "0.1.0"
