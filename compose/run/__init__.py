"""Running a validated recipe: the executor, gates, the training loop, checkpoints, fingerprints,
the saved artifacts and their integrity, the run folder, signals, several processes."""
