"""``python -m vldistill`` runs the command line."""

from vldistill.cli import main

main()
