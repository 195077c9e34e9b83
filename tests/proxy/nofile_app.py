"""An app that answers with the soft RLIMIT_NOFILE it runs under: fork mode imports
create_app, exec mode runs `python -m tests.proxy.nofile_app --port N`."""

from __future__ import annotations

import argparse
import resource

from aiohttp import web


async def _limit(_: web.Request) -> web.Response:
    return web.Response(text=str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _limit)
    app.router.add_get("/healthz", _limit)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    web.run_app(create_app(), host="127.0.0.1", port=parser.parse_args().port, print=None)


if __name__ == "__main__":
    main()
