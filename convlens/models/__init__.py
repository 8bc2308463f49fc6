"""Where a model comes from: your own code (``file.py:factory``), a ``torch.export`` program (``.pt2``),
TorchScript, or a weight file. ``training/runs.py``'s ``load_run`` turns any of these into a Run."""
