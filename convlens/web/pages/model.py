"""``/``: the model -- the lecture's per-layer table (memory and parameters), a link per layer."""
from __future__ import annotations

from . import page


@page("/", "model.html")
def model_page(ex, request) -> dict:
    summary = ex.summary
    rows = summary["layers"]
    return {"run": ex.name, "model": summary["model"], "input_size": summary["input_size"],
            "layers": rows, "totals": {k: summary[k] for k in ("total_params", "total_activations", "total_macs",
                                                                 "forward_bytes", "backward_bytes")},
            "classes": len(ex.run.class_names or []), "status": ex.run.status}
