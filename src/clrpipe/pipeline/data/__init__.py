"""The data wing: the cardio rules, user tables, fetching and the serving-time preprocessing."""
