"""The process table as /proc shows it (Linux), for the tests that stop and kill jobs and then
look for what is left of them (test_signals.py, test_crash_loops.py). A zombie counts as gone:
it has ended, only its exit status waits to be read."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Proc(NamedTuple):
    ppid: int
    pgid: int
    name: str


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # FileNotFoundError, ProcessLookupError: it ended meanwhile
        return None
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()


def table() -> dict[int, Proc]:
    """Every live (not zombie) process: pid -> (parent pid, process group, command name)."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(d.name)) is not None and st[1][0] != "Z":
            found[int(d.name)] = Proc(int(st[1][1]), int(st[1][2]), st[0])
    return found


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1][0] != "Z"


def descendants(pid: int) -> set[int]:
    """The live processes below `pid`: children, theirs, and so on (in any process group)."""
    procs, found, todo = table(), set(), [pid]
    while todo:
        parent = todo.pop()
        kids = {p for p, pr in procs.items() if pr.ppid == parent}
        found |= kids
        todo += kids
    return found


def group(pgid: int) -> list[str]:
    """The live processes of process group `pgid`: 'PID command'."""
    return [f"{p} {pr.name}" for p, pr in sorted(table().items()) if pr.pgid == pgid]


def workers(pid: int) -> list[int]:
    """The live processes `pid` forked that still run its program: pool workers (named as their
    parent) and DataLoader workers (pt_data_worker); not the helpers it ran (git)."""
    procs = table()
    if pid not in procs:
        return []
    names = {procs[pid].name, "pt_data_worker"}
    return sorted(p for p, pr in procs.items() if pr.ppid == pid and pr.name in names)
