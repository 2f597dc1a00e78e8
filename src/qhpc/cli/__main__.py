"""``python -m qhpc.cli``: the ``qhpc`` command without its console script."""

from qhpc.cli import main

main()
