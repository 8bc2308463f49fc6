"""Report section: how training went (curves per epoch and the settings used)."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table
from ..registry import section


@section("training", order=20)
def training(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...plots.training import training_curves

    history = ctx.run.history
    if not history:
        return None
    last = history[-1]
    seconds = sum(h.get("seconds") or 0 for h in history)
    metrics = {"epochs": str(len(history)), "final train accuracy": f"{100 * last['train_acc']:.2f}%",
               "training time": f"{seconds:,.0f} s"}
    if last.get("test_acc") is not None:
        metrics["final test accuracy"] = f"{100 * last['test_acc']:.2f}%"
    hyper = ctx.run.manifest.get("hyperparameters") or {}
    return Section("training", "Training", [
        Metrics(metrics),
        Figure("curves", to_png(training_curves(history)), "Loss and accuracy per epoch; learning-rate schedule."),
        Table(["setting", "value"], [[k, str(v)] for k, v in hyper.items()], caption="Hyper-parameters"),
    ], intro="The filters were trained by back-propagating the classification error (cross-entropy).")
