"""`limaml serve` (to be implemented)."""
import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds the `serve` sub-command(s)."""
