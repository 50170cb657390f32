"""The `dgmood` command line (typer)."""
