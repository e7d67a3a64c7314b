"""`modelpack discover`: list the live servers registered in ZooKeeper."""

from __future__ import annotations

import time

import click

from . import render, want_json


@click.command()
@click.argument("registry", metavar="zk://HOST:PORT/PATH")
@click.option("--model", help="Only instances serving this model.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def discover(ctx: click.Context, registry: str, model: str | None, as_json: bool) -> None:
    """List the live model servers registered under a ZooKeeper path."""
    from ..discovery import discover as find
    from ..discovery import parse_zk

    if as_json:
        want_json(ctx)
    instances = find(parse_zk(registry), model)
    if as_json:
        render.print_json({"status": "ok", "registry": registry, "instances": instances})
        return
    if not instances:
        render.out.print(f"no live instances under {registry}" + (f" for model '{model}'" if model else ""))
        return
    now = time.time()
    render.out.print(render.table(f"{len(instances)} live instance(s) under {registry}",
                                  ("znode", "model", "version", "address", "protocols", "up"), [
        (i["znode"].rsplit("/", 1)[-1], i["model"], i["version"], f"{i['scheme']}://{i['host']}:{i['port']}",
         ", ".join(i["protocols"]), f"{now - i['registered_at']:.0f}s") for i in instances]))
