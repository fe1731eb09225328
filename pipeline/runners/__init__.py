"""Runners: the in-process one (`local`) and the Ray one (`ray`), sharing `session` (the run
directory, the schedule and the status records, written by the driver only)."""
