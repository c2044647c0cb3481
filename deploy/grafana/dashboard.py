"""ctd's Grafana dashboard, defined with grafana-foundation-sdk (rows: ``deploy.grafana.rows``,
building blocks: ``deploy.grafana.panels``).

``python -m deploy.grafana.dashboard`` writes ``ctd-dashboard.json`` beside this file (the file
Grafana's provisioning loads); ``--check`` exits 1 when the committed file differs from this
definition. Edit the Python, never the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard

from deploy.grafana.panels import annotation_list, variable_list
from deploy.grafana.rows import rows

DASHBOARD_JSON = Path(__file__).with_name("ctd-dashboard.json")
UID = "ctd-overview"
TITLE = "ctd: continuous training daemon"
_LABEL_VALUES = re.compile(r"^label_values\((.+), \w+\)$")  # the selector of a variable query


# --- the dashboard -------------------------------------------------------------------------------
def build() -> dashboard.Dashboard:
    """The dashboard model: rows in order, each followed by its panels, ids numbered from 1."""
    board = (
        dashboard_builders.Dashboard(TITLE)
        .uid(UID)
        .description("Ingest, retraining, gates, live scoring and promotions of ctd.")
        .tags(["ctd"])
        .editable()
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("")
        .fiscal_year_start_month(0)
        .live_now(False)
        .week_start("")
        .annotations(annotation_list())
        .variables(variable_list())
    )
    panel_id = 0
    for title, panels in rows():
        panel_id += 1
        board.with_row(dashboard_builders.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board.with_panel(panel.id(panel_id))
    return board.build()


def render() -> str:
    """The dashboard as the JSON text committed in ``ctd-dashboard.json`` (sorted keys)."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard, Grafana's variables (``$instance``,
    ``$symbol``, ``$__rate_interval``, ``$__interval``, ``$__range``) left in place: panel
    targets, annotations, and the series selector of each query variable's ``label_values``.
    In dashboard order, each once."""
    model: dict[str, Any] = json.loads(render())
    found = [t["expr"] for p in model["panels"] for t in p.get("targets", [])]
    found += [a["expr"] for a in model["annotations"]["list"] if "expr" in a]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            found.append(_LABEL_VALUES.sub(r"\1", variable["definition"]))
    return list(dict.fromkeys(found))


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard JSON, or with ``--check`` return 1 if the file differs from it."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.grafana.dashboard", description="Write ctd-dashboard.json."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file is not the generated dashboard"
    )
    parser.add_argument("--output", type=Path, default=DASHBOARD_JSON, help="the JSON file")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        args.output.write_text(text)
        return 0
    if args.output.is_file() and args.output.read_text() == text:
        return 0
    print(
        f"{args.output} is not the dashboard that deploy/grafana/dashboard.py defines:"
        " run `python -m deploy.grafana.dashboard` and commit the result",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
