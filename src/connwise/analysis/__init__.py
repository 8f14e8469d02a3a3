"""Assessment of connection records: the baseline, segments, recommendations and reports."""
