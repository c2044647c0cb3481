"""Retraining: when a symbol is due (trigger), the worker pool that trains it
(scheduler, worker, jobs), what a finished run becomes (outcomes), tracking, and the
tuned hyperparameters retrains use (tuned) with the scheduled search for them (tuner)."""
