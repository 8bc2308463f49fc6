"""Training, evaluation, runs on disk, gradient checking."""
