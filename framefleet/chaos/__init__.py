"""The proof suite's record and its judge (issue 25).

`history` writes and reads what a chaos run records (the events are in `events`): every
operation with its outcome and every fault injected, as JSON lines, one file per process.
`checker` reads a history back and says whether the run kept the queue's promises (nothing
lost, nothing done twice, no stale output visible, outputs as a fault-free run's, nothing
stuck), and what the faults cost (`figures`).

Import the modules themselves (`framefleet.chaos.history`, `framefleet.chaos.checker`):
this package imports nothing, so that `python -m framefleet.chaos.checker` runs the module
once, as __main__ only.
"""
