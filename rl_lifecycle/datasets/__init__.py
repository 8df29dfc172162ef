"""Training datasets: snapshot-first builds, content-addressed by dataset_hash."""
