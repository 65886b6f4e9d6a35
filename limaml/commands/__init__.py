"""Sub-commands of ``limaml`` beyond data/run/kubeflow: one module each, with ``register(subparsers)``.

Each module adds its parser(s) and sets ``func`` to a function ``(args) -> int``; imports of heavy
libraries happen inside that function so ``limaml --help`` stays fast.
"""

MODULES = ("limaml.commands.bench", "limaml.commands.experiment", "limaml.commands.refresh",
           "limaml.commands.serve")
