"""One thin entry point per DVC stage; each reads its part of params.yaml, calls core code,
writes its outputs and logs its run. No stage imports another."""
