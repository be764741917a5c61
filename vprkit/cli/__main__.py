"""``python -m vprkit.cli``: the command line (also under torchrun)."""

from . import main

main()
