"""The daemon's local SQLite state: the bar store and the prediction log."""
