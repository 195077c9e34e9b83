"""A FastAPI app with a websocket route, as users write them (tests only)."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket

app = FastAPI()


@app.get("/")
def index() -> dict[str, str]:  # a sync view: FastAPI runs it on a worker thread
    return {"hello": "fastapi"}


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo: {text}")
    await websocket.close()
