"""Print the server's route table (lib/endpoints/routes.py ROUTE_ROLES) as the README's Markdown table.

.venv/bin/python scripts/route_table.py        # tests/test_auth.py checks the README holds this table
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "apps" / "brats_label"))

from lib.endpoints.routes import ROUTE_ROLES, Disabled  # noqa: E402


def markdown() -> str:
    lines = ["| method | route | least role |", "|---|---|---|"]
    for method, path, access in ROUTE_ROLES:
        role = f"not offered: {access.reason}" if isinstance(access, Disabled) else access.name.lower()
        lines.append(f"| {method} | `{path}` | {role} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
