"""`limaml bench` (to be implemented)."""
import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds the `bench` sub-command(s)."""
