"""Ends what an in-process Ray leaves behind when its driver dies without shutting it down (SIGKILL, OOM).

Ray's head processes die with the driver, but agents and workers they started are re-parented to init and
keep running (a dashboard agent and a runtime-env agent per kill, seen on Ray 2.60). `init_ray` starts this
watcher beside an in-process Ray: `python -I -m pipeline.reaper DRIVER_PID`, in its own session, with a pipe
from the driver on stdin. Every second it notes the driver's descendants; when the pipe closes (the driver
ended, however) it stops those still running and says so on stderr. Only Ray's processes (and what they
started) are noted, never another child of the driver. psutil compares start times, so a pid
reused by an unrelated process is left alone.
"""

from __future__ import annotations

import os
import select
import signal
import sys

import psutil

POLL_S = 1.0
GRACE_S = 3.0  # after SIGTERM, before SIGKILL


def _is_ray(p: psutil.Process) -> bool:
    """Ray's own processes (gcs_server, raylet, its Python services), not other children of the driver."""
    return any("/ray/" in part or part.startswith("ray::") for part in p.cmdline())


def _children() -> dict[int, list[psutil.Process]]:
    """Every process by parent pid, from one walk of the process table (psutil keeps the Process objects
    between calls): a walk per Ray process and poll cost a run a second of CPU a minute."""
    kids: dict[int, list[psutil.Process]] = {}
    for p in psutil.process_iter(["ppid"]):
        kids.setdefault(p.info["ppid"], []).append(p)
    return kids


def watch(driver_pid: int) -> list[str]:
    """Wait for the driver to end; stop its leftover descendants; return their descriptions."""
    seen: dict[int, psutil.Process] = {}
    # the driver's children known to be Ray's; the others are read again (a child not yet exec'd is not)
    ray_children: set[psutil.Process] = set()
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return []
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the driver is gone
        if not driver.is_running():
            break
        kids = _children()
        todo = []
        for child in kids.get(driver_pid, []):
            try:
                if child in ray_children or (child.pid != me and _is_ray(child)):
                    ray_children.add(child)
                    todo.append(child)
            except psutil.NoSuchProcess:
                pass
        while todo:
            p = todo.pop()
            seen.setdefault(p.pid, p)
            todo.extend(kids.get(p.pid, []))
    left = [p for p in seen.values() if p.is_running()]
    names = []
    for p in left:
        try:
            names.append(f"{p.pid} ({p.name()})")
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return names


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver; this outlives it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    driver = int(sys.argv[1])
    names = watch(driver)
    if names:
        print(
            f"phicurate: the driver (pid {driver}) ended without stopping its Ray; stopped {len(names)} "
            f"leftover process(es): {', '.join(names)}",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    main()
