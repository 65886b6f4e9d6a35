"""`limaml refresh` (to be implemented)."""
import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds the `refresh` sub-command(s)."""
