"""Render a :class:`~convlens.arch.summary.Summary` as the aligned text table its ``repr`` shows."""
from __future__ import annotations

MIB = 2 ** 20
COLUMNS = ("layer", "type", "output", "memory", "weights", "biases", "mult-adds", "rf", "jump", "start")
RIGHT = {"memory", "weights", "biases", "mult-adds", "rf", "jump", "start"}


def render(s) -> str:
    """The table (one line per row, thousands separators) with the totals under it."""
    body = [COLUMNS] + [_cells(r) for r in s.rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if col in RIGHT else cell.ljust(w)
                       for cell, w, col in zip(line, widths, COLUMNS)).rstrip() for line in body]
    rule = "-" * len(max(lines, key=len))
    c, h, w = s.input_size
    per_image = s.total_activations * s.bytes_per_value
    totals = [
        f"{s.model}: input {h}x{w}x{c}, batch {s.batch_size}, {s.dtype} ({s.bytes_per_value} bytes per value)",
        f"params:    {s.total_params:,} ({s.total_weights:,} weights + {s.total_biases:,} biases; "
        f"{s.trainable_params:,} trainable; {_bytes(s.param_bytes)})",
        f"memory:    {s.total_activations:,} values per image = {_bytes(per_image)} forward, "
        f"x2 with backward = {_bytes(2 * per_image)}"
        + (f"; batch {s.batch_size}: {_bytes(s.forward_bytes + s.backward_bytes)}" if s.batch_size > 1 else ""),
        f"mult-adds: {s.total_macs:,} per image ({s.total_macs / 1e9:,.2f} G)",
        "(n): not counted (in place, a view, or an element-wise activation/dropout); start: unit 0's first pixel",
    ] + ([f"note: {s.note}"] if s.note else [])
    return "\n".join([lines[0], rule, *lines[1:], rule, *totals])


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", MIB), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def _cells(r) -> tuple[str, ...]:
    memory = f"{r.activations:,}" if r.counted else f"({r.activations:,})"
    return (r.name, r.type, "x".join(str(d) for d in r.output_shape), memory, f"{r.weights:,}", f"{r.biases:,}",
            f"{r.macs:,}", _geo(r.rf), _geo(r.jump), _geo(r.start))


def _geo(v) -> str:
    if v is None:
        return "?"
    return str(v) if isinstance(v, int) else f"{v[0]}x{v[1]}"
