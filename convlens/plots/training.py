"""Training curves: loss and accuracy per epoch, train and test, with the learning rate."""
from __future__ import annotations

from .common import pyplot


def training_curves(history: list[dict]):
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, key, label in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train", color="#3b6fd8")
        test = [h.get(f"test_{key}") for h in history]
        if any(v is not None for v in test):
            ax.plot(epochs, test, "s-", label="test", color="#e07a3b")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    axes[2].plot(epochs, [h.get("lr") for h in history], "o-", color="#555")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("learning rate (start of epoch)", fontsize=11)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig
