"""Feature contract of LiMAML: raw feature keys, their roles and the curated schema."""
