"""The HTML report: one self-contained page (figures embedded) plus the PNG figures beside it.

``report(run)`` asks every registered section (see ``registry.py``) for its part; a section with
nothing to show (e.g. results never computed) is left out. Saved results are read from the run's
results store, however they got there: a command, the demo, or Python
(``convlens.ResultStore(run).save("class-model", convlens.class_model(run, "star"))``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConvLensError, expect
from ..layers import model_label
from .blocks import Section, Text
from .context import ReportContext
from .page import write_page
from .registry import all_sections


def report(run, out: str | Path | None = None, *, data=None, title: str | None = None) -> Path:
    """Write the HTML report of ``run`` (a Run or a run directory) to ``out`` (default ``<run>/report``)
    and return the path of ``report.html``.

    ``data``: the test images the report evaluates on and shows (a dataset name or path, whose test
    split is read, or an ImageDataset); default: the test split the run's manifest names. A model
    loaded from a weight file names none, so its report needs ``data`` for the evaluation section.
    """
    from ..training.runs import Run, load_run

    if not isinstance(run, Run):
        if not isinstance(run, (str, Path)):
            raise expect("run", "a Run or a run directory", type(run).__name__)
        run = load_run(run)
    if data is not None and not isinstance(data, (str, Path)) and \
            not all(hasattr(data, a) for a in ("images", "labels")):
        raise expect("data", "a dataset name or path, or an ImageDataset (images, labels, class_names)",
                     type(data).__name__)
    out_dir = Path(out) if out is not None else Path(run.dir or ".") / "report"
    ctx = ReportContext(run, out_dir, data=data)
    sections = []
    for spec in all_sections():
        try:
            sec = spec.build(ctx)
        except ConvLensError as err:  # show what went wrong in place of the section, keep the rest
            sec = Section(spec.id, spec.id.replace("-", " ").capitalize(), [Text(f"Not available: {err}")])
        if sec is not None:
            sections.append(sec)
    name = title or (Path(run.dir).name if run.dir else "model")
    source = (run.manifest.get("data") or {}).get("source", "")
    label = model_label(run.model)
    trained = run.manifest.get("status") not in ("wrapped", "loaded")
    subtitle = (f"{label} trained on {source}" if trained else f"{label}, test images {source}") if source else label
    return write_page(sections, out_dir, title=name, subtitle=subtitle)



__all__ = ["report", "ReportContext"]
