"""`python -m connwise.analysis`: ingest, assess and export without the rest of connwise."""

from connwise.analysis.cli import app

app(prog_name="python -m connwise.analysis")
