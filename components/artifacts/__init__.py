"""Custom artifact types of LiMAML."""
