"""The tags clrpipe puts on MLflow runs, named once for the run writers, the abandoned-run sweep
and the tests that read them back."""

from __future__ import annotations

__all__ = [
    "ABANDONED",
    "ERROR_TAG",
    "HOST_TAG",
    "PID_NAMESPACE_TAG",
    "PID_TAG",
    "PIPELINE_TAG",
    "PROCESS_START_TAG",
    "STAGE_TAG",
    "STARTED_TAG",
    "TRIAL_TAG",
]

PIPELINE_TAG = "clrpipe.pipeline"
STAGE_TAG = "clrpipe.stage"
TRIAL_TAG = "clrpipe.trial"
ERROR_TAG = "clrpipe.error"
HOST_TAG = "clrpipe.host"
PID_TAG = "clrpipe.pid"
PROCESS_START_TAG = "clrpipe.process_start"  # /proc/<pid>/stat start time: tells pid reuse
PID_NAMESPACE_TAG = "clrpipe.pid_namespace"  # boot id + pid namespace the pid belongs to
STARTED_TAG = "clrpipe.started"
ABANDONED = "abandoned: process ended without closing the run"
