"""Security suites: the AEP fixtures of tests/aep/conftest.py (loaded from its file, since both folders
have a module named conftest) next to the NCLUE ones of tests/conftest.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parent.parent / "aep" / "conftest.py"
_spec = importlib.util.spec_from_file_location("aep_fixtures", _path)
aep_fixtures = sys.modules.get("aep_fixtures") or importlib.util.module_from_spec(_spec)
if "aep_fixtures" not in sys.modules:
    sys.modules["aep_fixtures"] = aep_fixtures
    _spec.loader.exec_module(aep_fixtures)

aep = aep_fixtures.aep  # noqa: F401 - the fixture, found by its name
