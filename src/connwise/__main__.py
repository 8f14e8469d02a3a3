"""`python -m connwise`: the same command as the `connwise` script, for when the script is not
on PATH (a venv not activated, a zipapp)."""

from connwise.cli import app

app(prog_name="connwise")
