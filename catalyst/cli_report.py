"""``catalyst report``: the session report (placeholder until built)."""

import click


@click.command()
def report() -> None:
    """Write the day's report (not built yet)."""
    raise click.ClickException("catalyst report is not built yet")
