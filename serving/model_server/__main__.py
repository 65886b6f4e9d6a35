"""``python -m serving.model_server``: see :mod:`serving.model_server.cli`."""
import sys

from serving.model_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
