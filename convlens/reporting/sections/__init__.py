"""One module per report section; each registers itself with ``@section`` (see ../registry.py)."""
