"""Where forkproxy's CPU goes under load: py-spy samples the proxy process (its main
thread, native frames included, so system calls show as libc's write/read/epoll) while
wrk drives it, and the top frames by self and by cumulative time become two tables of
the data-path section. Generated from the samples, never typed."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

from forkproxy.loadtest.load.httpload import run_load
from forkproxy.loadtest.run.procs import run_captured
from forkproxy.loadtest.sections.model import Section, Table, say

SECONDS = 5  # sampled; wrk runs 2 s longer so the samples never see its ramp-up or end
RATE = 200  # samples per second: with native stacks py-spy itself stays under ~5% of a core
TOP = 15
_ROOT_SHARE = 0.95  # frames on nearly every stack (runpy, main, the loop's run) say nothing


@dataclasses.dataclass(frozen=True)
class Profile:
    samples: int
    self_time: list[tuple[str, float]]  # (frame, share of samples) where the sample was taken
    cumulative: list[tuple[str, float]]  # (Python function, share) on the stack at all
    connections: int = 0
    rps: float = 0.0  # what the load reached while sampled
    load: str = ""  # the load's command


def py_spy_path() -> str | None:
    """py-spy on PATH, or beside this interpreter (a venv's bin/, not always on PATH)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def _frame(text: str) -> str:
    """'Forwarder.relay (proxy/http/forward.py)' stays; a bare address ('0x7f.. (libc.so.6)')
    becomes its library, so unnamed native frames of one library add up."""
    if text.startswith("0x") and " (" in text:
        return "[native] " + text.split(" (", 1)[1].rstrip(")")
    return text


def aggregate(raw: str, top: int = TOP) -> Profile:
    """py-spy's raw (collapsed) output, `--threads --nolineno`: one line per distinct stack,
    'thread (id): Name;outer;...;inner COUNT'. Only the main thread (the event loop) counts:
    the other threads of the process wait in a thread pool and cost nothing (py-spy cannot
    tell that wait from work)."""
    self_n: collections.Counter[str] = collections.Counter()
    cum_n: collections.Counter[str] = collections.Counter()
    total = 0
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    # a process that never imported threading has no thread names: then every stack counts
    named = any(frames[0].endswith(": MainThread") for frames, _ in stacks)
    for frames, n in stacks:
        if frames[0].startswith("thread ("):
            if named and not frames[0].endswith(": MainThread"):
                continue
            frames = frames[1:]
        if not frames:
            continue
        total += n
        names = [_frame(f) for f in frames]
        self_n[names[-1]] += n
        for f in set(names):
            cum_n[f] += n
    if not total:
        return Profile(0, [], [])
    cumulative = [
        (f, n / total)
        for f, n in cum_n.most_common()
        if n / total < _ROOT_SHARE and f.split(" (", 1)[-1].endswith(".py)")
    ]
    return Profile(
        total,
        [(f, n / total) for f, n in self_n.most_common(top)],
        cumulative[:top],
    )


async def _record(py_spy: str, pid: int, out: Path) -> str | None:
    """Sample `pid` for SECONDS; None if py-spy could not, else why not."""
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(SECONDS)]
    argv += ["--rate", str(RATE), "--format", "raw", "--native", "--threads", "--nolineno"]
    argv += ["--output", str(out)]
    ran = await run_captured(argv, SECONDS + 8)
    if ran is None:
        return "py-spy did not finish in time"
    if ran.returncode != 0:
        last = ran.out.strip().splitlines()[-1:] or ["no output"]
        # attaching needs ptrace: root, or CAP_SYS_PTRACE / kernel.yama.ptrace_scope=0
        return f"py-spy could not sample pid {pid} (needs ptrace): {last[0]}"
    return None


async def measure(pid: int, url: str, connections: int, use_wrk: bool) -> Profile | str:
    """Profile the proxy at `pid` under `connections` connections to `url`, or say why not."""
    py_spy = py_spy_path()
    if py_spy is None:
        return "py-spy is not installed (pip install 'forkproxy[bench]')"
    say(f"  profile: py-spy on forkproxy (pid {pid}), {connections} connections, {SECONDS}s")
    with tempfile.TemporaryDirectory(prefix="forkproxy-profile-") as tmp:
        out = Path(tmp) / "profile.raw"
        async with asyncio.TaskGroup() as tg:
            load = tg.create_task(run_load(url, connections, SECONDS + 2, use_wrk))
            await asyncio.sleep(1.0)
            why = await _record(py_spy, pid, out)
        if why is not None:
            return why
        try:
            raw = await asyncio.to_thread(out.read_text, errors="replace")
        except OSError as exc:
            return f"py-spy wrote no profile: {exc}"
        prof = aggregate(raw)
    if not prof.samples:
        return "py-spy recorded no samples of the main thread"
    res = load.result()
    return dataclasses.replace(prof, connections=connections, rps=res.rps, load=res.command)


def report(sec: Section, prof: Profile | str) -> None:
    """The two tables (or a skip with the reason) and the figures in sec.data['profile']."""
    if isinstance(prof, str):
        sec.skip("profile", prof)
        return
    sec.commands.append(
        f"profile: py-spy record --pid <forkproxy> --duration {SECONDS} --rate {RATE} "
        f"--format raw --native --threads --nolineno, during {prof.load}"
    )
    where = (
        f"forkproxy's event loop under {prof.connections} connections ({prof.rps:,.0f} req/s "
        f"while sampled), {prof.samples} samples in {SECONDS} s"
    )
    sec.tables.append(
        Table(
            ["frame (self time)", "share of samples"],
            [[f, f"{s:.1%}"] for f, s in prof.self_time],
            f"Profile, self time: where the samples of {where} were taken. Native frames are "
            "C: libc's write/read are system calls, epoll_pwait is the loop waiting for events "
            "(idle, or the kernel's wakeups), the rest the interpreter, uvloop and llhttp",
        )
    )
    sec.tables.append(
        Table(
            ["Python function (cumulative)", "share of samples"],
            [[f, f"{s:.1%}"] for f, s in prof.cumulative],
            f"Profile, cumulative: the Python functions on the stack, {where}",
        )
    )
    sec.data["profile"] = {
        "samples": prof.samples,
        "connections": prof.connections,
        "rps_while_sampled": prof.rps,
        "self": [[f, s] for f, s in prof.self_time],
        "cumulative": [[f, s] for f, s in prof.cumulative],
    }
