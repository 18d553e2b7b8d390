"""The comparison wing: multi-seed comparison, its Ray trials and the CI gate."""
