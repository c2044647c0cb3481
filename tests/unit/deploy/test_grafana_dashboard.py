"""The Grafana dashboard as code: the committed JSON is the generated one, and it is sound.

Sound: every panel reads the ``DS_PROMETHEUS`` data source, ids are unique, panels do not
overlap on the 24-column grid, every expression is balanced and names only metrics that
daemon/metrics.py exports. promtool parses the expressions in tests/integration/test_ops_assets.py.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

import daemon.metrics
from deploy.grafana import dashboard

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
GRID_COLUMNS = 24
# The series a query may name for an exported family, by family type.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "info": ("_info",),
}
CLOSERS = {")": "(", "]": "[", "}": "{"}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(dashboard.render())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def rows(board: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> the panels after it, up to the next row."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            current = grouped.setdefault(panel["title"], [])
        else:
            current.append(panel)
    return grouped


def metric_names(expr: str) -> set[str]:
    """ctd_* names in PromQL code; label values and other string literals are skipped."""
    code = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)
    return set(re.findall(r"(?<![\w:])ctd_[A-Za-z0-9_:]*", code))


def unbalanced(expr: str) -> str | None:
    """What is wrong with the brackets and quotes of ``expr``, or None when they balance."""
    stack: list[str] = []
    in_string = escaped = False
    for i, ch in enumerate(expr):
        if escaped:
            escaped = False
        elif in_string and ch == "\\":
            escaped = True
        elif ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in CLOSERS and (not stack or stack.pop() != CLOSERS[ch]):
            return f"unexpected {ch!r} at {i}"
    if in_string:
        return "unterminated string"
    return f"unclosed {''.join(stack)!r}" if stack else None


def overlaps(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of panel titles that share a grid cell."""
    owner: dict[tuple[int, int], str] = {}
    clashes: list[tuple[str, str]] = []
    for item in items:
        pos = item["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in owner and (owner[(x, y)], item["title"]) not in clashes:
                    clashes.append((owner[(x, y)], item["title"]))
                owner[(x, y)] = item["title"]
    return clashes


def defined_series() -> set[str]:
    """Series names daemon.metrics exports: the families of ``Metrics`` and of every collector
    class in the module, each collector fed empty sources (``dict`` returns no rows)."""
    registry = CollectorRegistry()
    daemon.metrics.Metrics(registry, version="0+test")
    for value in vars(daemon.metrics).values():
        # Collector is a Protocol without runtime checks: look for it among the bases.
        defined_here = getattr(value, "__module__", None) == daemon.metrics.__name__
        if defined_here and isinstance(value, type) and Collector in value.__mro__:
            registry.register(value(*[dict] * len(inspect.signature(value).parameters)))
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SERIES_SUFFIXES.get(family.type, ("",))
    }


# --- generated, and the generator --------------------------------------------------------------
def test_committed_json_is_the_generated_dashboard() -> None:
    """deploy/grafana/ctd-dashboard.json is what dashboard.py renders, byte for byte."""
    committed = dashboard.DASHBOARD_JSON.read_text()
    assert committed == dashboard.render(), (
        "ctd-dashboard.json is stale: run `python -m deploy.grafana.dashboard`"
    )


def test_main_writes_the_json_and_check_fails_only_on_a_different_file(tmp_path, capsys) -> None:
    """Without flags main writes the file; ``--check`` is 0 on it, 1 with a message otherwise."""
    out = tmp_path / "dash.json"
    assert dashboard.main(["--check", "--output", str(out)]) == 1  # missing
    assert dashboard.main(["--output", str(out)]) == 0
    assert out.read_text() == dashboard.render()
    assert dashboard.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace('"30s"', '"1m"'))
    capsys.readouterr()
    assert dashboard.main(["--check", "--output", str(out)]) == 1
    assert "python -m deploy.grafana.dashboard" in capsys.readouterr().err


def test_rendering_is_stable_with_sorted_keys() -> None:
    """Two renders are equal and every object's keys are sorted, so diffs stay small."""
    text = dashboard.render()
    assert text == dashboard.render()
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_provisioning_identity_is_kept(board) -> None:
    """uid, title and the variables the provisioning and queries rely on stay as they were."""
    assert (board["uid"], board["title"]) == ("ctd-overview", "ctd: continuous training daemon")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"DS_PROMETHEUS", "instance", "symbol"}
    assert (variables["DS_PROMETHEUS"]["type"], variables["DS_PROMETHEUS"]["query"]) == (
        "datasource",
        "prometheus",
    )
    for name in ("instance", "symbol"):
        assert variables[name]["datasource"] == DS
        assert variables[name]["query"]["query"] == variables[name]["definition"]
        assert variables[name]["definition"].endswith(f", {name})")


# --- soundness ------------------------------------------------------------------------------------
def test_every_panel_and_query_reads_the_ds_prometheus_variable(board) -> None:
    """Each panel, each of its targets and each PromQL annotation use ``${DS_PROMETHEUS}``."""
    for panel in panels(board):
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
            assert target["expr"].strip(), panel["title"]
    queried = [a for a in board["annotations"]["list"] if "expr" in a]
    assert queried
    assert all(a["datasource"] == DS for a in queried)


def test_panel_ids_are_unique(board) -> None:
    """No two panels (rows included) share an id; ids are positive."""
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids), ids
    assert min(ids) >= 1


def test_panels_fit_the_grid_and_do_not_overlap(board) -> None:
    """Every panel lies within the 24 columns and no two panels share a cell."""
    for item in board["panels"]:
        pos = item["gridPos"]
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] >= 1 and pos["h"] >= 1, item
        assert pos["x"] + pos["w"] <= GRID_COLUMNS, item["title"]
    assert overlaps(board["panels"]) == []


def test_every_expression_balances_brackets_and_quotes() -> None:
    """Parens, brackets, braces and double quotes of each expression balance."""
    problems = {e: unbalanced(e) for e in dashboard.expressions() if unbalanced(e)}
    assert not problems, problems


def test_expressions_name_only_metrics_that_daemon_metrics_exports() -> None:
    """Every ctd_* series the dashboard queries is one daemon/metrics.py exports."""
    exported = defined_series()
    assert {"ctd_ready", "ctd_build_info", "ctd_prediction_latency_seconds_bucket"} <= exported
    used = {name for expr in dashboard.expressions() for name in metric_names(expr)}
    assert len(used) >= 35  # the extraction found the catalogue, not an empty set
    assert used - exported == set(), f"not exported by daemon.metrics: {sorted(used - exported)}"


def test_expressions_are_every_query_of_the_dashboard(board) -> None:
    """expressions() holds every target and annotation expr, each once, variables in place."""
    exprs = dashboard.expressions()
    assert len(set(exprs)) == len(exprs)
    targets = {t["expr"] for p in panels(board) for t in p["targets"]}
    annotations = {a["expr"] for a in board["annotations"]["list"] if "expr" in a}
    assert targets | annotations <= set(exprs)
    assert {"ctd_build_info", 'ctd_ingest_bars_total{instance=~"$instance"}'} <= set(exprs)
    assert not any("label_values" in e for e in exprs)
    variables = {v for e in exprs for v in re.findall(r"\$\w+", e)}
    assert variables == {"$instance", "$symbol", "$__rate_interval", "$__interval", "$__range"}


# --- what the dashboard shows ---------------------------------------------------------------------
def test_rows_keep_their_order_and_the_new_rows_follow() -> None:
    """The four original rows come first, then Fleet, Predictions and Quarantine."""
    titles = [p["title"] for p in json.loads(dashboard.render())["panels"] if p["type"] == "row"]
    assert titles == [
        "Health",
        "Ingest",
        "Training",
        "Live scoring and promotion",
        "Fleet",
        "Predictions",
        "Quarantine",
    ]


@pytest.mark.parametrize(
    ("row", "metrics"),
    [
        (
            "Fleet",
            {
                "ctd_owned_partitions",
                "ctd_symbol_takeovers_total",
                "ctd_rebuild_bars_total",
                "ctd_rebuild_duration_seconds_bucket",
                "ctd_rebuild_duration_seconds_sum",
                "ctd_rebuild_duration_seconds_count",
                "ctd_trial_checkpoints_total",
                "ctd_registry_fenced_total",
            },
        ),
        (
            "Predictions",
            {"ctd_predictions_published_total", "ctd_prediction_latency_seconds_bucket"},
        ),
        ("Quarantine", {"ctd_symbol_quarantined"}),
    ],
)
def test_new_rows_query_their_metrics(board, row: str, metrics: set[str]) -> None:
    """Each new row has panels on each of its metrics, filtered to the selected daemons."""
    exprs = [t["expr"] for p in rows(board)[row] for t in p["targets"]]
    assert {n for e in exprs for n in metric_names(e)} == metrics
    assert all('instance=~"$instance"' in e for e in exprs)


def test_prediction_latency_shows_p50_and_p99(board) -> None:
    """The latency panel draws the 0.5 and 0.99 quantiles of the bar-to-published histogram."""
    exprs = [t["expr"] for p in rows(board)["Predictions"] for t in p["targets"]]
    quantiles = {q for e in exprs for q in re.findall(r"histogram_quantile\(([\d.]+),", e)}
    assert quantiles == {"0.5", "0.99"}


def test_quarantine_shows_a_count_that_is_zero_when_none_is_and_a_table_with_reasons(
    board,
) -> None:
    """The stat counts quarantined symbols (``or vector(0)``: data when there are none); the
    table is an instant table query keeping symbol and reason."""
    by_type = {p["type"]: p for p in rows(board)["Quarantine"]}
    (count,) = by_type["stat"]["targets"]
    assert count["expr"].endswith(" or vector(0)")
    (listing,) = by_type["table"]["targets"]
    assert (listing["format"], listing["instant"]) == ("table", True)
    assert re.search(r"by \([^)]*symbol[^)]*\)", listing["expr"])
    assert re.search(r"by \([^)]*reason[^)]*\)", listing["expr"])


# --- the checks above can fail ------------------------------------------------------------------
def test_the_checkers_find_what_they_look_for() -> None:
    """Unbalanced text, overlapping panels and quoted names are caught, not waved through."""
    assert unbalanced('sum(rate(ctd_x{a="b"}[5m]))') is None
    assert unbalanced('sum(rate(ctd_x{a="b"}[5m])') == "unclosed '('"
    assert unbalanced("sum(rate(ctd_x[5m)))") is not None
    assert unbalanced('ctd_x{a="b}') == "unterminated string"
    assert unbalanced(r'ctd_x{a="\")"}') is None
    a = {"title": "a", "gridPos": {"x": 0, "y": 0, "w": 8, "h": 8}}
    b = {"title": "b", "gridPos": {"x": 7, "y": 7, "w": 8, "h": 8}}
    c = {"title": "c", "gridPos": {"x": 8, "y": 0, "w": 8, "h": 8}}
    assert overlaps([a, b, c]) == [("a", "b"), ("b", "c")]
    assert overlaps([a, c]) == []
    assert metric_names('ctd_a_total{job="ctd_b"} / ctd_c:rate') == {"ctd_a_total", "ctd_c:rate"}
    assert "ctd_nope_total" not in defined_series()
