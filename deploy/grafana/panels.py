"""The building blocks of ctd's Grafana dashboard (grafana-foundation-sdk): panel kinds with
the house style, the decision annotations and the data-source / label variables.

Every query reads the data source picked by the ``DS_PROMETHEUS`` variable. Used by
``deploy.grafana.rows``; the dashboard itself is ``deploy.grafana.dashboard``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TypeVar

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

PROMETHEUS = dashboard.DataSourceRef(type_val="prometheus", uid="${DS_PROMETHEUS}")
GRAFANA = dashboard.DataSourceRef(type_val="grafana", uid="-- Grafana --")

Model_co = TypeVar("Model_co", covariant=True)
Panel = timeseries.Panel | stat.Panel | bargauge.Panel | statetimeline.Panel | table.Panel
Query = tuple[str, str]  # PromQL, legend
Steps = Sequence[tuple[float | None, str]]  # threshold value (None: the base), colour

UP_DOWN = dashboard.ValueMap(
    options={
        "0": dashboard.ValueMappingResult(text="down", color="red", index=0),
        "1": dashboard.ValueMappingResult(text="up", color="green", index=1),
    }
)
RED_UNTIL_1: Steps = ((None, "red"), (1, "green"))
GREEN: Steps = ((None, "green"),)


# --- panel kinds ---------------------------------------------------------------------------------
def targets(
    queries: Sequence[Query], *, instant: bool = False, fmt: PromQueryFormat | None = None
) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    """Prometheus queries with refIds A, B, ...: range queries, or instant ones of ``fmt``."""
    targets: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
    for ref_id, (expr, legend) in zip(string.ascii_uppercase, queries, strict=False):
        query = (
            prometheus_builders.Dataquery()
            .datasource(PROMETHEUS)
            .expr(expr)
            .legend_format(legend)
            .ref_id(ref_id)
        )
        if instant:
            query.instant().format(fmt or PromQueryFormat.TIME_SERIES)
        else:
            query.range()
        targets.append(query)
    return targets


def thresholds(steps: Steps) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for value, color in steps])
    )


def by_thresholds() -> dashboard_builders.FieldColor:
    return dashboard_builders.FieldColor().mode(dashboard.FieldColorModeId.THRESHOLDS)


def last_value() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def timeseries_panel(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str | None = None,
    width: int = 8,
) -> timeseries.Panel:
    """Lines over time, legend below, a multi-series tooltip sorted by value."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .targets(targets(queries))
        .span(width)
        .height(8)
        .draw_style(common.GraphDrawStyle.LINE)
        .fill_opacity(10)
        .line_width(1)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if unit is not None:
        panel.unit(unit)
    return panel


def events_panel(
    title: str, description: str, queries: Sequence[Query], *, width: int = 8
) -> timeseries.Panel:
    """Stacked bars of events per 5-minute step (queries use ``increase(...[$__interval])``)."""
    return (
        timeseries_panel(title, description, queries, width=width)
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL).group("A"))
        .interval("5m")
    )


def stat_panel(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    steps: Steps,
    width: int,
    height: int = 4,
    up_down: bool = False,
    instant: bool = False,
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
) -> stat.Panel:
    """The last value of each series on a background coloured by ``steps``."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .targets(targets(queries, instant=instant))
        .span(width)
        .height(height)
        .color_scheme(by_thresholds())
        .thresholds(thresholds(steps))
        .reduce_options(last_value())
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
    )
    if up_down:
        panel.mappings([UP_DOWN])
    return panel


def bars_now_panel(
    title: str,
    description: str,
    query: Query,
    *,
    steps: Steps,
    unit: str | None = None,
    fraction: bool = False,
) -> bargauge.Panel:
    """Horizontal gradient bars of the current value of each series (an instant query)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .targets(targets([query], instant=True))
        .span(8)
        .height(8)
        .color_scheme(by_thresholds())
        .thresholds(thresholds(steps))
        .reduce_options(last_value())
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
    )
    if unit is not None:
        panel.unit(unit)
    if fraction:
        panel.min(0).max(1)
    return panel


# --- annotations and variables -------------------------------------------------------------------
class Model(cogbuilder.Builder[Model_co]):
    """A builder for a model object made directly (the SDK's builders cannot make the two below)."""

    def __init__(self, model: Model_co) -> None:
        self._model = model

    def build(self) -> Model_co:
        return self._model


class PrometheusAnnotation(dashboard.AnnotationQuery):
    """An annotation per symbol from PromQL, with the Prometheus data source's own fields
    (title, text, tags, step), which the SDK's data-source-neutral schema does not carry."""

    def __init__(self, name: str, color: str, expr: str, title: str) -> None:
        super().__init__(
            name=name, datasource=PROMETHEUS, enable=True, hide=False, icon_color=color, expr=expr
        )
        self.title_format = title

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "step": "1m",
            "titleFormat": self.title_format,
            "textFormat": "{{symbol}}",
            "tagKeys": "symbol",
            "useValueForTime": False,
        }


class LabelValues(dashboard.VariableModel):
    """A multi-value variable of one label's values on the series of a selector ("All" is
    ``.*``), with the ``definition`` Grafana shows for it, which the SDK's schema lacks."""

    def __init__(self, name: str, label: str, selector: str, label_name: str) -> None:
        self.definition = f"label_values({selector}, {label_name})"
        super().__init__(
            type_val=dashboard.VariableType.QUERY,
            name=name,
            label=label,
            hide=dashboard.VariableHide.DONT_HIDE,
            query={
                "query": self.definition,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
                "qryType": 1,
            },
            datasource=PROMETHEUS,
            multi=True,
            options=[],
            refresh=dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED,
            sort=dashboard.VariableSort.ALPHABETICAL_ASC,
            include_all=True,
            all_value=".*",
            regex="",
        )

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "definition": self.definition}


def decision(name: str, color: str, metric: str, title: str) -> Model[PrometheusAnnotation]:
    expr = (
        f'sum by (symbol) (increase({metric}{{instance=~"$instance", symbol=~"$symbol"}}[2m])) > 0'
    )
    return Model(PrometheusAnnotation(name, color, expr, title))


def annotation_list() -> list[cogbuilder.Builder[dashboard.AnnotationQuery]]:
    return [
        dashboard_builders.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(GRAFANA)
        .built_in(1)
        .type("dashboard")
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)"),
        decision("Promotions", "green", "ctd_promotions_total", "shadow promoted"),
        decision("Shadow rejections", "orange", "ctd_shadow_rejections_total", "shadow rejected"),
        decision("Rollbacks", "red", "ctd_rollbacks_total", "champion rolled back"),
    ]


def variable_list() -> list[cogbuilder.Builder[dashboard.VariableModel]]:
    return [
        dashboard_builders.DatasourceVariable("DS_PROMETHEUS")
        .label("Data source")
        .type("prometheus")
        .hide(dashboard.VariableHide.DONT_HIDE)
        .regex(""),
        Model(LabelValues("instance", "Daemon", "ctd_build_info", "instance")),
        Model(
            LabelValues(
                "symbol", "Symbol", 'ctd_ingest_bars_total{instance=~"$instance"}', "symbol"
            )
        ),
    ]
