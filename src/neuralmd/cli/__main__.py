"""``python -m neuralmd.cli``: the command line."""

from . import main

main()
