"""``python -m vprkit.cli``: the command line (also under torchrun)."""

from vprkit.cli import main

main()
