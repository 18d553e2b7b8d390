"""clrpipe: find good learning rates, then train with them, tracked and reproducible."""
