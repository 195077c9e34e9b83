"""A real Django project (django-admin startproject, one app, one model on SQLite,
migrated) in fork mode: WSGI and ASGI entry points, DJANGO_SETTINGS_MODULE from
backend.env, and one database connection per fork - the connection the template
opened while warming up is closed before the first fork, as gunicorn's preload does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.backends.contract import get
from tests.backends.process.helpers import MakeBackend

APP_FILES = {
    "notes/__init__.py": "",
    "notes/apps.py": """
        import os

        from django.apps import AppConfig
        from django.db.backends.signals import connection_created


        def _remember_opener(sender, connection, **kwargs):
            connection.opened_in = os.getpid()


        class NotesConfig(AppConfig):
            name = "notes"
            default_auto_field = "django.db.models.BigAutoField"

            def ready(self):
                connection_created.connect(_remember_opener)
        """,
    "notes/models.py": """
        from django.db import models


        class Note(models.Model):
            text = models.CharField(max_length=100)
        """,
    "notes/views.py": """
        import os

        from django.conf import settings
        from django.db import connection
        from django.http import JsonResponse

        from notes.models import Note


        def _db_fds():
            # open file descriptors of this process on the SQLite database file
            db = str(settings.DATABASES["default"]["NAME"])
            fds = os.listdir("/proc/self/fd")
            return sum(1 for fd in fds if _target(fd) == db)


        def _target(fd):
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return None


        def index(request):
            count = Note.objects.count()  # opens this thread's connection if it has none
            return JsonResponse({
                "pid": os.getpid(),
                "opened_in": connection.opened_in,
                "notes": count,
                "greeting": settings.GREETING,
                "db_fds": _db_fds(),
            })
        """,
    "mysite/warm.py": """
        import os


        def run():
            from notes.models import Note

            Note.objects.count()  # a query in the template: its connection must not leak
            from django.db import connection

            with open(os.environ["DJANGO_TEST_WARM_LOG"], "w") as f:
                f.write(str(connection.opened_in))
        """,
    "mysite/settings_forkproxy.py": """
        from mysite.settings import *  # noqa: F403

        INSTALLED_APPS = [*INSTALLED_APPS, "notes"]  # noqa: F405
        ROOT_URLCONF = "mysite.urls_forkproxy"
        GREETING = "from settings_forkproxy"
        """,
    "mysite/urls_forkproxy.py": """
        from django.urls import path

        from notes.views import index

        urlpatterns = [path("", index)]
        """,
}
SETTINGS = "mysite.settings_forkproxy"


@pytest.fixture(scope="module")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("django")
    django = [sys.executable, "-m", "django"]
    subprocess.run([*django, "startproject", "mysite", str(root)], check=True, timeout=60)
    (root / "notes").mkdir()
    for name, text in APP_FILES.items():
        (root / name).write_text(textwrap.dedent(text).lstrip())
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS, "PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    manage = [sys.executable, "manage.py"]
    for cmd in (["makemigrations", "notes"], ["migrate", "--noinput"]):
        subprocess.run([*manage, *cmd], cwd=root, env=env, check=True, timeout=120)
    shell = "from notes.models import Note; Note.objects.create(text='hi')"
    subprocess.run([*manage, "shell", "-c", shell], cwd=root, env=env, check=True, timeout=60)
    return root


async def test_each_fork_opens_its_own_database_connection(
    make_backend: MakeBackend, django_project: Path, tmp_path: Path
) -> None:
    warm_log = tmp_path / "warm.log"
    backend = make_backend(
        app="mysite.wsgi:application",
        cwd=str(django_project),
        env={"DJANGO_SETTINGS_MODULE": SETTINGS, "DJANGO_TEST_WARM_LOG": str(warm_log)},
        warmup="mysite.warm:run",
        prefork=1,
    )
    await backend.prepare()
    assert backend.concurrency_hint() == 4  # detected as WSGI
    template_pid = int(warm_log.read_text())  # the template opened a connection
    seen = []
    for n in range(2):
        inst = await backend.start(f"dj-{n}")
        status, body = await get(inst.endpoint.url + "/")
        assert status == 200, body
        seen.append(json.loads(body))
    for answer in seen:
        assert answer["notes"] == 1
        assert answer["greeting"] == "from settings_forkproxy"  # env's settings module
        assert answer["opened_in"] == answer["pid"] != template_pid
        # Django connections are per thread, so the serving thread opened its own anyway;
        # the template's (on the fork's main thread) must be gone, not merely unused: on
        # a network database it is a socket shared with the template and every sibling.
        assert answer["db_fds"] == 1
    assert seen[0]["pid"] != seen[1]["pid"]


async def test_django_asgi_entry_point(make_backend: MakeBackend, django_project: Path) -> None:
    backend = make_backend(
        app="mysite.asgi:application",
        cwd=str(django_project),
        env={"DJANGO_SETTINGS_MODULE": SETTINGS},
    )
    await backend.prepare()
    assert backend.concurrency_hint() is None  # async: the pool's default applies
    inst = await backend.start("dj-asgi")
    status, body = await get(inst.endpoint.url + "/")
    assert status == 200, body
    answer = json.loads(body)
    assert (answer["notes"], answer["greeting"]) == (1, "from settings_forkproxy")
