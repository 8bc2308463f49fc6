"""Report section: the per-layer table the lecture prints for VGG-16, for this run's network."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


@section("architecture", order=10)
def architecture(ctx) -> Section | None:
    from ...arch.summary import summary
    from ...plots.common import to_png
    from ...plots.summary import memory_and_params

    s = summary(ctx.model, ctx.input_shape)
    d = s.to_dict()
    rows = []
    for r in d["layers"]:
        h, w, c = r["output_shape"]
        memory = r["activations"] if r["counted"] else f"({r['activations']:,})"
        rows.append([r["name"], r["type"], f"{h}x{w}x{c}", memory, r["weights"], r["biases"],
                     r["macs"], "" if r["rf"] is None else str(r["rf"]), "" if r["jump"] is None else str(r["jump"])])
    blocks = [
        Metrics({"parameters": f"{d['total_params']:,}", "weights (no biases)": f"{d['total_weights']:,}",
                 "activations / image": f"{d['total_activations']:,}",
                 "forward memory / image": _mb(d["forward_bytes"]),
                 "multiply-adds / image": f"{d.get('total_macs', sum(r['macs'] for r in d['layers'])):,}"}),
    ]
    spec = getattr(ctx.model, "spec", None)
    if spec:
        blocks.append(Text(f"Spec: {spec}"))
    blocks += [
        Table(["layer", "type", "output (HxWxC)", "memory (values)", "weights", "biases", "mult-adds",
               "receptive field", "jump"], rows),
        Text("Memory in parentheses is not counted in the total: in-place results, views, and element-wise "
             "activations and dropout, which deployed networks apply in place (as the lecture's table counts)."),
        Figure("memory-params", to_png(memory_and_params(d)),
               "Activations per image and parameters per layer (log scale): as the lecture notes for VGG-16, "
               "most memory is in the early convolutions and most parameters in the late fully connected layers."),
    ]
    return Section("architecture", "Architecture", blocks,
                   intro="Per-layer output shape, memory and parameters, computed by shape propagation on the "
                         "meta device (no activation memory is allocated).")
