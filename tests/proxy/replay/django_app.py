"""A one-view Django project for fork mode: /r/file answers with a FileResponse, which
Django's WSGI handler turns into wsgi.file_wrapper (waitress then writes the file even
to HEAD, the case of issue 21 (b)); any other path answers like wsgi_app.py."""

from __future__ import annotations

import io
from typing import Any

import django
from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse
from django.urls import re_path

from tests.proxy.replay.marker import HEADER, ID_HEADER, answer, late, seen

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="replay-only",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()


def _rid(request: HttpRequest) -> str:
    return str(request.headers.get(ID_HEADER, ""))


def file(request: HttpRequest) -> FileResponse:
    resp = FileResponse(io.BytesIO(late(_rid(request))))
    resp[HEADER] = seen(request.method or "", request.get_full_path(), _rid(request), b"")
    return resp


def other(request: HttpRequest, **_: Any) -> HttpResponse:
    status, headers, out = answer(
        request.method or "", request.get_full_path(), _rid(request), request.body
    )
    resp = HttpResponse(out, status=status)
    for name, value in headers:
        resp[name] = value
    return resp


urlpatterns = [re_path(r"^r/file$", file), re_path(r"^.*$", other)]

from django.core.wsgi import get_wsgi_application  # noqa: E402 - needs the settings above

application = get_wsgi_application()
