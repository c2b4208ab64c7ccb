"""``winnow review``: serve the review app (``winnow.review``) on this machine; registered by
``winnow.flows.commands``."""

from __future__ import annotations

import getpass
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from winnow.flows.console import err_console, one_line_errors
from winnow.models.errors import WinnowError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ReviewError(WinnowError):
    """A review server that would be unsafe or cannot start."""


def check_host(host: str, token: str | None) -> None:
    """Any host but this machine's loopback needs a token: the app writes into the catalog."""
    if host not in LOCAL_HOSTS and not token:
        raise ReviewError(f"--host {host} serves beyond this machine: give --token (a secret the page sends)")


def make_server(app, host: str, port: int):
    """A uvicorn server for ``app`` on ``host``:``port`` (0 = a free port), quiet."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))


def review_command(
    catalog: Annotated[Path, typer.Argument(help="catalog folder")] = Path("out/catalog"),
    run: Annotated[str | None, typer.Option(help="only this run's prompts")] = None,
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help="address to bind; not loopback: needs --token")] = "127.0.0.1",
    token: Annotated[str | None, typer.Option(help="secret each request must carry (URL ?token=)")] = None,
    reviewer: Annotated[str | None, typer.Option(help="name stored with decisions (default: login)")] = None,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open the page in a browser")] = True,
) -> None:
    """Review the selection in the browser: one prompt at a time, keyboard first (? for help).
    Decisions are stored as label parts under CATALOG/labels; the catalog's kept_final uses them."""
    from urllib.parse import quote

    from winnow.review.app import create_app

    with one_line_errors():
        check_host(host, token)
        app = create_app(catalog, run, token, reviewer or getpass.getuser())
    server = make_server(app, host, port)
    url = f"http://{'127.0.0.1' if host in LOCAL_HOSTS else host}:{port}/"
    if token:
        url += f"?token={quote(token)}"
    err_console.print(f"review: [bold]{url}[/] (Ctrl-C stops; decisions are saved as they are made)")
    if open_browser:
        webbrowser.open(url)
    server.run()
