"""Training, evaluation, runs on disk, gradient checking (the flat API: convlens.train, convlens.evaluate, ...)."""
