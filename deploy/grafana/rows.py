# Over 400 lines: panel definitions (PromQL and layout), data more than logic.
"""The rows of ctd's Grafana dashboard, in order, each a list of panels with their PromQL.

Every query keeps to the selected daemons (``instance=~"$instance"``) and, where the
metric has the label, the selected symbols (``symbol=~"$symbol"``). Panel ids are
numbered from 1 in this order (``deploy.grafana.dashboard.build``), so a panel added
anywhere but at the end renumbers those after it (and their ``viewPanel`` links).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import statetimeline, table
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from deploy.grafana.panels import (
    GREEN,
    PROMETHEUS,
    RED_UNTIL_1,
    UP_DOWN,
    Panel,
    bars_now_panel,
    by_thresholds,
    events_panel,
    stat_panel,
    targets,
    thresholds,
    timeseries_panel,
)


# --- rows ----------------------------------------------------------------------------------------
def health() -> list[Panel]:
    return [
        stat_panel(
            "Broker",
            "ctd_kafka_connected: 1 when the Kafka broker answers the connectivity probe.",
            [('ctd_kafka_connected{instance=~"$instance"}', "{{instance}}")],
            steps=RED_UNTIL_1,
            up_down=True,
            width=4,
        ),
        stat_panel(
            "Ready",
            "ctd_ready: 1 when /readyz answers ready (started, store and broker ok).",
            [('ctd_ready{instance=~"$instance"}', "{{instance}}")],
            steps=RED_UNTIL_1,
            up_down=True,
            width=4,
        ),
        stat_panel(
            "Retrain queue",
            "Jobs waiting for a worker, and jobs running in worker processes.",
            [
                ('sum(ctd_retrain_queue_depth{instance=~"$instance"})', "waiting"),
                ('sum(ctd_training_running{instance=~"$instance"})', "running"),
            ],
            steps=GREEN,
            width=5,
        ),
        stat_panel(
            "Version",
            "ctd_build_info: the running build.",
            [('ctd_build_info{instance=~"$instance"}', "{{version}}")],
            steps=GREEN,
            instant=True,
            text_mode=common.BigValueTextMode.NAME,
            width=4,
        ),
        statetimeline.Panel()
        .title("Broker connectivity")
        .description("History of ctd_kafka_connected per daemon; red stretches are outages.")
        .datasource(PROMETHEUS)
        .targets(targets([('ctd_kafka_connected{instance=~"$instance"}', "{{instance}}")]))
        .span(7)
        .height(4)
        .mappings([UP_DOWN])
        .color_scheme(by_thresholds())
        .thresholds(thresholds(RED_UNTIL_1))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.9)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(False)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        ),
    ]


def ingest() -> list[Panel]:
    return [
        timeseries_panel(
            "Ingest rate",
            "Valid bars received per second by symbol, bars newly stored (re-deliveries"
            " excluded), Kafka messages consumed and store transactions (one per poll batch).",
            [
                (
                    "sum by (symbol) (rate(ctd_ingest_bars_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__rate_interval]))',
                    "{{symbol}}",
                ),
                (
                    "sum(rate(ctd_store_new_bars_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__rate_interval]))',
                    "stored (selected)",
                ),
                (
                    'sum(rate(ctd_ingest_messages_total{instance=~"$instance"}[$__rate_interval]))',
                    "messages",
                ),
                (
                    "sum(rate(ctd_store_transactions_total"
                    '{instance=~"$instance"}[$__rate_interval]))',
                    "store transactions",
                ),
            ],
            unit="ops",
        ),
        timeseries_panel(
            "Ingest lag",
            "Age of the newest bar of the last stored batch, and time since bars were last"
            " stored (alerts: CtdIngestLagGrowing, CtdIngestStalled).",
            [
                ('ctd_ingest_lag_seconds{instance=~"$instance"}', "lag {{instance}}"),
                (
                    'time() - ctd_last_ingest_timestamp_seconds{instance=~"$instance"}'
                    ' and ctd_last_ingest_timestamp_seconds{instance=~"$instance"} > 0',
                    "since last stored {{instance}}",
                ),
            ],
            unit="s",
        ),
        timeseries_panel(
            "Dead letters and ingest errors",
            "Invalid messages sent to the dead-letter topic per second, their share of consumed"
            " messages, batches that failed and will be re-delivered, bars refused as"
            " implausible (by rule) and corrections of stored bars.",
            [
                (
                    "sum by (kind) (rate(ctd_dlq_messages_total"
                    '{instance=~"$instance"}[$__rate_interval]))',
                    "dead-lettered/s {{kind}}",
                ),
                (
                    "sum(rate(ctd_dlq_messages_total"
                    '{instance=~"$instance", kind="message"}[$__rate_interval]))'
                    " / sum(rate(ctd_ingest_messages_total"
                    '{instance=~"$instance"}[$__rate_interval]))',
                    "DLQ share",
                ),
                (
                    "sum by (kind) (rate(ctd_ingest_errors_total"
                    '{instance=~"$instance"}[$__rate_interval]))',
                    "errors {{kind}}/s",
                ),
                (
                    "sum by (rule) (rate(ctd_implausible_bars_total"
                    '{instance=~"$instance"}[$__rate_interval]))',
                    "implausible {{rule}}/s",
                ),
                (
                    "sum(rate(ctd_store_corrections_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__rate_interval]))',
                    "corrections/s",
                ),
            ],
            unit="ops",
        ).override_by_name(
            "DLQ share",
            [
                dashboard.DynamicConfigValue(id_val="unit", value="percentunit"),
                dashboard.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        ),
    ]


def training() -> list[Panel]:
    return [
        timeseries_panel(
            "Retrain queue and workers",
            "Retrain jobs waiting for a worker and training jobs running.",
            [
                ('sum(ctd_retrain_queue_depth{instance=~"$instance"})', "waiting"),
                ('sum(ctd_training_running{instance=~"$instance"})', "running"),
            ],
            width=6,
        ),
        events_panel(
            "Training runs by outcome",
            "Finished training runs: champion (first model), shadow, rejected by the gates,"
            " failed (crash, timeout, exception); and retrains skipped untrained because they"
            " would repeat the last finished run (same_data, few_new_bars).",
            [
                (
                    "sum by (outcome) (increase(ctd_training_runs_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__interval]))',
                    "{{outcome}}",
                ),
                (
                    "sum by (reason) (increase(ctd_retrains_skipped_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__interval]))',
                    "skipped: {{reason}}",
                ),
            ],
            width=6,
        ),
        timeseries_panel(
            "Training duration",
            "Trigger-to-registry wall time by outcome over a 1 h window: median, p90 and mean.",
            [
                (
                    "histogram_quantile(0.5, sum by (le, outcome) (rate("
                    'ctd_training_duration_seconds_bucket{instance=~"$instance"}[1h])))',
                    "p50 {{outcome}}",
                ),
                (
                    "histogram_quantile(0.9, sum by (le, outcome) (rate("
                    'ctd_training_duration_seconds_bucket{instance=~"$instance"}[1h])))',
                    "p90 {{outcome}}",
                ),
                (
                    "sum by (outcome) (rate("
                    'ctd_training_duration_seconds_sum{instance=~"$instance"}[1h]))'
                    " / sum by (outcome) (rate("
                    'ctd_training_duration_seconds_count{instance=~"$instance"}[1h]))',
                    "mean {{outcome}}",
                ),
            ],
            unit="s",
            width=6,
        ),
        events_panel(
            "Training warnings by kind",
            "Training-time monitor warnings (divergence, non_finite, overfitting,"
            " exploding_gradients); alert CtdDivergenceWarnings.",
            [
                (
                    "sum by (kind) (increase(ctd_training_warnings_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__interval]))',
                    "{{kind}}",
                )
            ],
            width=6,
        ),
        bars_now_panel(
            "Gate fail share",
            "Share of candidate verdicts that failed, per quality gate, over the dashboard's"
            " time range.",
            (
                "sum by (gate) (increase(ctd_gate_verdicts_total"
                '{instance=~"$instance", outcome="fail"}[$__range]))'
                " / sum by (gate) (increase(ctd_gate_verdicts_total"
                '{instance=~"$instance"}[$__range]))',
                "{{gate}}",
            ),
            steps=((None, "green"), (0.5, "orange"), (0.9, "red")),
            unit="percentunit",
            fraction=True,
        ),
        events_panel(
            "Registry decisions",
            "Versions added, first champions, shadow placements, promotions, shadow rejections"
            " and rollbacks.",
            [
                (
                    f"sum(increase({metric}"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__interval]))',
                    legend,
                )
                for metric, legend in (
                    ("ctd_registry_versions_total", "versions"),
                    ("ctd_champion_bootstraps_total", "first champions"),
                    ("ctd_shadow_placements_total", "shadow placements"),
                    ("ctd_promotions_total", "promotions"),
                    ("ctd_shadow_rejections_total", "shadow rejections"),
                    ("ctd_rollbacks_total", "rollbacks"),
                )
            ],
        ),
        bars_now_panel(
            "Model age",
            "Seconds since the model in each slot was trained (alert CtdChampionStale at 7"
            " days for champions).",
            (
                'ctd_model_age_seconds{instance=~"$instance", symbol=~"$symbol"}',
                "{{symbol}} {{slot}}",
            ),
            steps=((None, "green"), (86400, "yellow"), (604800, "red")),
            unit="s",
        ),
    ]


def live_scoring() -> list[Panel]:
    return [
        # Repeated per selected symbol; Grafana sizes the copies (up to three in a line).
        timeseries_panel(
            "Live accuracy $symbol",
            "Rolling live accuracy of champion and shadow on the same resolved bars; one panel"
            " per selected symbol.",
            [('ctd_live_accuracy{instance=~"$instance", symbol=~"$symbol"}', "{{slot}}")],
            unit="percentunit",
            width=24,
        )
        .repeat("symbol")
        .repeat_direction("h")
        .max_per_row(3),
        timeseries_panel(
            "Promotion test statistic",
            "log10 of the shadow-better e-value of each running trial, and the level it is"
            " promoted at (ctd_promotion_level): log10(1/alpha) = 1.3 per symbol (alpha ="
            " 0.05, the red line, also the early-reject level), higher under fleet-wide"
            " e-LOND, where it falls as the fleet's promotions add up.",
            [
                (
                    'ctd_promotion_test_statistic{instance=~"$instance", symbol=~"$symbol"}',
                    "{{symbol}}",
                ),
                (
                    'ctd_promotion_level{instance=~"$instance", symbol=~"$symbol"}',
                    "level {{symbol}}",
                ),
            ],
        )
        .fill_opacity(0)
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
        .thresholds(thresholds(((None, "transparent"), (1.3, "red")))),
        timeseries_panel(
            "Shadow trial samples",
            "Paired bars collected by each running shadow trial.",
            [
                (
                    'ctd_shadow_trial_samples{instance=~"$instance", symbol=~"$symbol"}',
                    "{{symbol}}",
                )
            ],
        ),
        timeseries_panel(
            "Live predictions and errors",
            "Live predictions logged per second, and live-scoring problems (unloadable model,"
            " failed batch).",
            [
                (
                    "sum by (symbol) (rate(ctd_live_predictions_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__rate_interval]))',
                    "{{symbol}}",
                ),
                (
                    "sum by (symbol) (rate(ctd_live_errors_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__rate_interval]))',
                    "errors {{symbol}}",
                ),
            ],
            unit="ops",
        ),
        events_panel(
            "Live monitor triggers by kind",
            "Retrains triggered by the live monitors: drift, decay, staleness, schedule, command.",
            [
                (
                    "sum by (kind) (increase(ctd_live_monitor_triggers_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__interval]))',
                    "{{kind}}",
                )
            ],
        ),
        bars_now_panel(
            "Feature PSI (top 10)",
            "Population stability index of each live feature against the champion's training"
            " data; above 0.1 moderate, above 0.25 major shift.",
            (
                'topk(10, ctd_feature_psi{instance=~"$instance", symbol=~"$symbol"})',
                "{{symbol}} {{feature}}",
            ),
            steps=((None, "green"), (0.1, "yellow"), (0.25, "red")),
        ),
        events_panel(
            "Commands and notifications",
            "Operator commands by action and outcome, commands rejected (unsigned, badly signed,"
            " expired, replayed), alert deliveries by sink and outcome, promotion events not"
            " published to Kafka.",
            [
                (
                    "sum by (action, outcome) (increase(ctd_commands_total"
                    '{instance=~"$instance"}[$__interval]))',
                    "command {{action}} {{outcome}}",
                ),
                (
                    "sum by (sink, outcome) (increase(ctd_alert_deliveries_total"
                    '{instance=~"$instance"}[$__interval]))',
                    "{{sink}} {{outcome}}",
                ),
                (
                    "sum(increase(ctd_alert_deliveries_total"
                    '{instance=~"$instance", sink="kafka", outcome="failed"}[$__interval]))',
                    "promotions topic: failed",
                ),
                (
                    "sum by (reason) (increase(ctd_commands_rejected_total"
                    '{instance=~"$instance"}[$__interval]))',
                    "command rejected: {{reason}}",
                ),
            ],
        ),
    ]


def fleet() -> list[Panel]:
    return [
        timeseries_panel(
            "Owned partitions",
            "Bars-topic partitions each daemon owns, and their sum: steps are rebalances; the"
            " sum dips while partitions move between daemons.",
            [
                ('sum by (instance) (ctd_owned_partitions{instance=~"$instance"})', "{{instance}}"),
                ('sum(ctd_owned_partitions{instance=~"$instance"})', "all selected daemons"),
            ],
        ),
        events_panel(
            "Symbol takeovers",
            "Symbols each daemon claimed in the registry after a rebalance.",
            [
                (
                    "sum by (instance) (increase(ctd_symbol_takeovers_total"
                    '{instance=~"$instance"}[$__interval]))',
                    "{{instance}}",
                )
            ],
        ),
        events_panel(
            "Registry fenced writes",
            "Registry writes refused because another daemon now owns the symbol: a daemon"
            " that lost the symbol still tried to write (expected briefly around a takeover).",
            [
                (
                    "sum by (symbol) (increase(ctd_registry_fenced_total"
                    '{instance=~"$instance", symbol=~"$symbol"}[$__interval]))',
                    "{{symbol}}",
                )
            ],
        ),
        events_panel(
            "Bars rebuilt from Kafka",
            "Bars replayed from Kafka into the local store when a daemon took over partitions.",
            [
                (
                    "sum by (instance) (increase(ctd_rebuild_bars_total"
                    '{instance=~"$instance"}[$__interval]))',
                    "{{instance}}",
                )
            ],
        ),
        timeseries_panel(
            "Rebuild duration",
            "Wall time to replay taken-over partitions into the local store, over a 1 h"
            " window: median, p90 and mean.",
            [
                (
                    "histogram_quantile(0.5, sum by (le) (rate("
                    'ctd_rebuild_duration_seconds_bucket{instance=~"$instance"}[1h])))',
                    "p50",
                ),
                (
                    "histogram_quantile(0.9, sum by (le) (rate("
                    'ctd_rebuild_duration_seconds_bucket{instance=~"$instance"}[1h])))',
                    "p90",
                ),
                (
                    'sum(rate(ctd_rebuild_duration_seconds_sum{instance=~"$instance"}[1h]))'
                    ' / sum(rate(ctd_rebuild_duration_seconds_count{instance=~"$instance"}[1h]))',
                    "mean",
                ),
            ],
            unit="s",
        ),
        events_panel(
            "Trial checkpoints",
            "Shadow-trial checkpoints written to the registry, so that a trial survives a"
            " takeover.",
            [
                (
                    "sum by (instance) (increase(ctd_trial_checkpoints_total"
                    '{instance=~"$instance"}[$__interval]))',
                    "{{instance}}",
                )
            ],
        ),
    ]


def predictions() -> list[Panel]:
    return [
        timeseries_panel(
            "Predictions published",
            "Prediction records sent to the predictions topic per second, by the broker's"
            " answer (acked, failed).",
            [
                (
                    "sum by (outcome) (rate(ctd_predictions_published_total"
                    '{instance=~"$instance"}[$__rate_interval]))',
                    "{{outcome}}",
                )
            ],
            unit="ops",
            width=12,
        ),
        timeseries_panel(
            "Bar to published prediction latency",
            "From a bar's arrival (its poll returned) to the broker's acknowledgement of its"
            " prediction: median and p99.",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate("
                    'ctd_prediction_latency_seconds_bucket{instance=~"$instance"}'
                    "[$__rate_interval])))",
                    legend,
                )
                for q, legend in (("0.5", "p50"), ("0.99", "p99"))
            ],
            unit="s",
            width=12,
        ),
    ]


def quarantine() -> list[Panel]:
    return [
        stat_panel(
            "Quarantined symbols",
            "Symbols quarantined now (ctd_symbol_quarantined == 1); 0 when none is.",
            [
                (
                    "count(count by (symbol) (ctd_symbol_quarantined"
                    '{instance=~"$instance", symbol=~"$symbol"} == 1)) or vector(0)',
                    "quarantined",
                )
            ],
            steps=((None, "green"), (1, "red")),
            width=6,
            height=8,
        ),
        table.Panel()
        .title("Quarantined symbols and reasons")
        .description("Each quarantined symbol, why, and the daemon that quarantined it.")
        .datasource(PROMETHEUS)
        .targets(
            targets(
                [
                    (
                        "max by (symbol, reason, instance) (ctd_symbol_quarantined"
                        '{instance=~"$instance", symbol=~"$symbol"} == 1)',
                        "",
                    )
                ],
                instant=True,
                fmt=PromQueryFormat.TABLE,
            )
        )
        .span(18)
        .height(8)
        .no_value("No symbol is quarantined")
        .with_transformation(
            dashboard.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True, "Value": True},
                    "indexByName": {"symbol": 0, "reason": 1, "instance": 2},
                },
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("symbol")]),
    ]


def rows() -> list[tuple[str, list[Panel]]]:
    return [
        ("Health", health()),
        ("Ingest", ingest()),
        ("Training", training()),
        ("Live scoring and promotion", live_scoring()),
        ("Fleet", fleet()),
        ("Predictions", predictions()),
        ("Quarantine", quarantine()),
    ]
