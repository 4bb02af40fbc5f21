"""``python -m deltamem`` runs the command line, like the ``deltamem`` script."""

from deltamem.cli import app

if __name__ == "__main__":
    app(prog_name="deltamem")
