"""``python -m deltamem`` runs the command line, like the ``deltamem`` script."""

from deltamem.cli import app

app(prog_name="deltamem")
