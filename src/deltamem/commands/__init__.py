"""The ``deltamem`` commands, by group; ``deltamem.cli`` assembles them into one typer app."""
