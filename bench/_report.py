"""What every bench prints the same way: the machine it ran on, and the report as a table or JSON."""
from __future__ import annotations

import json
import os
import platform
import sys


def machine() -> dict:
    return {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}


def emit(report: dict, as_json: bool, print_table) -> int:
    """Print ``report`` as one JSON object or through ``print_table``; the bench's exit code (0)."""
    if as_json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print_table(report)
    return 0
