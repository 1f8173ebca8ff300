"""``python -m musplit`` runs the command line."""

from musplit.cli import _exit

_exit()
