"""The long-running daemon and the ``ctd`` command, in layers (import-linter keeps them):

cli (commands) > app (wiring, start/stop order) > intake (the ingest thread) >
kafka | live | training (independent of each other) > store, schedules, http >
actions, metrics, settings, loop > errors, logs, paths, text.
"""
