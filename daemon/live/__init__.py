"""The live side of a stored batch: scoring and trials (path), announcing decisions
(announce), and the live monitors of each champion (watch)."""
