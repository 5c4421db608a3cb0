"""``catalyst metrics``: Catalyst's Prometheus metrics (placeholder until built)."""

import click


@click.command()
def metrics() -> None:
    """Serve Catalyst's Prometheus metrics (not built yet)."""
    raise click.ClickException("catalyst metrics is not built yet")
