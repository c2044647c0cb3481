"""Pure judgement, no I/O: training-time rules (``rules``, ``training``), the gates a
candidate must pass (``gates``), and live monitors of a champion (drift, decay,
staleness; ``watch`` is their protocol). Imports no other ctd package."""
