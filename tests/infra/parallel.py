"""How the suite runs in parallel (pytest-xdist) and how its process ends. A plugin: tests/conftest.py
loads it with `pytest_plugins`.

`make test` runs `pytest -n 3 --dist loadgroup` (Makefile's XDIST): three worker processes, each
with its own session: its own SeaweedFS server (free ports, a folder under its basetemp), its own
PostgreSQL databases (their names carry the pid), its own tmp_path and ports. Most tests wait on
subprocesses, servers and polls, so three workers on two cores beat two. Tests go one at a time
to whichever worker is free, except those that must share a process:

* tests that use a module- or class-scoped fixture of ours (e.g. the console's browser tests, which
  run in order on one page of one live server) stay together: xdist group = their module;
* tests that use a fixture of GROUPED_FIXTURES (statically or through request.getfixturevalue in
  their own or their fixtures' code) share one worker, so that only one worker starts e.g. Ray.

A test's own `@pytest.mark.xdist_group(...)` wins. `--dist loadgroup` runs the biggest groups first.

Ending: after pytest's summary the interpreter spent minutes in its final garbage collection and
module teardown. Once the session is over (every fixture torn down, so every server stopped), the
report written and the exit status known, the process ends with os._exit(status): statuses 0 (passed),
1 (failures) and 5 (no test collected) only; an interrupt or an internal error exits the normal way.
Only in a process that pytest's command line started (`pytest`, `python -m pytest`, an xdist worker),
never in the caller of pytest.main(). USERLENS_TEST_FAST_EXIT=0 turns it off (it is off under
coverage, which writes its data at exit).
"""

from __future__ import annotations

import inspect
import logging
import os
import sys

import pytest

# Session fixture -> the xdist group of every test that uses it.
GROUPED_FIXTURES = {"ray_cluster": "ray"}
_SHARED_SCOPES = ("module", "class", "package")
_FAST_EXIT_STATUSES = (0, 1, 5)
_session_key = pytest.StashKey[pytest.Session]()
_source_cache: dict[object, str] = {}


def _source(func) -> str:
    if func not in _source_cache:
        try:
            _source_cache[func] = inspect.getsource(func)
        except (OSError, TypeError):
            _source_cache[func] = ""
    return _source_cache[func]


def group_of(item) -> str | None:
    """The xdist group `item` must run in, or None when any worker may take it."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # not a Python test function
        return None
    defs = [fd for fds in info.name2fixturedefs.values() for fd in fds]
    for name in info.names_closure:
        if name in GROUPED_FIXTURES:
            return GROUPED_FIXTURES[name]
    for func in [getattr(item, "function", None)] + [fd.func for fd in defs if fd.baseid]:
        text = _source(func) if func is not None else ""
        for name, group in GROUPED_FIXTURES.items():
            if name in text:
                return group
    if any(fd.baseid and fd.scope in _SHARED_SCOPES for fd in defs):  # baseid "": a plugin's fixture
        return item.nodeid.split("::")[0]
    return None


def _tag_nodeid(item, group: str) -> None:
    """`--dist loadgroup` schedules by the node id's `@group` suffix. xdist 3.8 sets it through
    `item._nodeid`, which pytest 9 no longer reads (its node id is `str(item._id)`): set it here."""
    if item.nodeid.endswith(f"@{group}"):
        return  # xdist did it (pytest 8)
    tagged = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(tagged)
    else:
        item._nodeid = tagged
    if item.nodeid != tagged:
        raise pytest.UsageError(f"cannot give {item.nodeid} its xdist group on this pytest: run with -n0")


@pytest.hookimpl(trylast=True)  # after -k / -m / --deselect and after xdist's own hook
def pytest_collection_modifyitems(config, items) -> None:
    grouping = hasattr(config, "workerinput") and config.getoption("loadgroup", default=False)
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None:
            group = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
        else:
            group = group_of(item)
            if group is None:
                continue
            item.add_marker(pytest.mark.xdist_group(group))
        if grouping:
            _tag_nodeid(item, str(group))


def pytest_sessionstart(session) -> None:
    session.config.stash[_session_key] = session


def _fast_exit_wanted(config) -> bool:
    if os.environ.get("USERLENS_TEST_FAST_EXIT", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "coverage" in sys.modules:
        return False
    if hasattr(config, "workerinput"):  # an xdist worker process
        return True
    # Only a process that pytest's command line started: never the caller of pytest.main().
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) in ("pytest", "py.test") or argv0.endswith(os.path.join("pytest", "__main__.py"))


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config) -> None:
    session = config.stash.get(_session_key, None)
    if session is None or not _fast_exit_wanted(config):
        return
    status = int(session.exitstatus)
    if status not in _FAST_EXIT_STATUSES:
        return
    # What the skipped clean-ups would have done that matters: hand back output still captured
    # (written by a late teardown), close log files, flush the terminal.
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.stop_global_capturing()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(status)
