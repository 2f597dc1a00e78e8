"""The bench scripts' ``--json`` report, written one way.

Imported as ``from _report import write_report``: the scripts run as
``python bench/SCRIPT.py`` (also as subprocesses of ``qhpc bench``), so this folder
is first on ``sys.path``. Standard library only, so that importing it costs the
benches nothing they measure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(path: Path, report: Any) -> None:
    """``report`` as indented JSON at ``path`` (its folder made if missing); says so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
