"""Pieces shared by the custom components."""
