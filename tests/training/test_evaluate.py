"""convlens.evaluate against independent counts, plus the `train` and `evaluate` CLI commands."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import convlens.cli.train_cmds  # noqa: F401  (registers train/evaluate on the app)
from convlens.cli.app import main
from convlens.data.dataset import ImageDataset
from convlens.errors import InputError
from convlens.training.evaluate import Evaluation, evaluate
from convlens.training.fit import train
from convlens.training.runs import load_run


class Lookup(nn.Module):
    """Returns fixed scores: pixel (0, 0, 0) of each image holds the row index into ``table``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.w = nn.Parameter(torch.zeros(()))  # so that device/dtype can be read off a parameter

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()] + self.w


def indexed_images(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return x


def test_against_a_plain_loop_on_random_scores():
    g = torch.Generator().manual_seed(0)
    n, c = 40, 7
    table = torch.randn(n, c, generator=g)  # distinct scores: no ties
    labels = torch.randint(0, c, (n,), generator=g)
    labels[:c] = torch.arange(c)  # every class present
    names = [f"c{i}" for i in range(c)]
    ev = evaluate(Lookup(table), (indexed_images(n), labels), class_names=names)

    top1 = top5 = 0
    conf = [[0] * c for _ in range(c)]
    for i in range(n):
        ranked = sorted(range(c), key=lambda j: -table[i, j].item())
        top1 += ranked[0] == labels[i]
        top5 += labels[i].item() in ranked[:5]
        conf[labels[i].item()][ranked[0]] += 1
    assert ev.top1_error == pytest.approx(1 - top1 / n)
    assert ev.top5_error == pytest.approx(1 - top5 / n)
    assert ev.confusion.tolist() == conf
    for k in range(c):
        assert ev.per_class_accuracy[k].item() == pytest.approx(conf[k][k] / sum(conf[k]))
    d = ev.to_dict()
    assert d["n"] == n and d["per_class"]["c3"] == pytest.approx(conf[3][3] / sum(conf[3]))
    off = sorted(((conf[t][p], t, p) for t in range(c) for p in range(c) if t != p and conf[t][p]),
                 key=lambda r: (-r[0], r[1], r[2]))
    assert [(r["count"], r["true"], r["predicted"]) for r in ev.most_confused(100)] == \
        [(cnt, names[t], names[p]) for cnt, t, p in off]


def test_hand_checked_numbers():
    # 6 images, 3 classes. Scores chosen by hand:
    table = torch.tensor([[3., 2., 1.],   # true 0, predicted 0          correct
                          [3., 1., 2.],   # true 0, predicted 0          correct
                          [1., 3., 2.],   # true 0, predicted 1 (2nd: 2) wrong; top-2 wrong
                          [1., 3., 2.],   # true 1, predicted 1          correct
                          [3., 2., 1.],   # true 1, predicted 0 (2nd: 1) wrong; top-2 right
                          [3., 1., 2.]])  # true 2, predicted 0 (2nd: 2) wrong; top-2 right
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    ev = evaluate(Lookup(table), (indexed_images(6), labels), class_names=["a", "b", "c"], k=2)
    assert ev.top1_error == pytest.approx(3 / 6)
    assert ev.top_error(2) == pytest.approx(1 / 6)
    assert ev.per_class_accuracy.tolist() == pytest.approx([2 / 3, 1 / 2, 0.0])
    assert ev.confusion.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert [(r["class"], r["examples"]) for r in ev.easiest()] == [("a", [0, 1]), ("b", [3]), ("c", [])]
    assert [(r["class"], r["examples"]) for r in ev.hardest()] == [("c", [5]), ("b", [4]), ("a", [2])]
    assert ev.most_confused()[0] == {"true": "a", "predicted": "b", "count": 1, "fraction": pytest.approx(1 / 3)}
    d = ev.to_dict()
    assert d["top2_error"] == pytest.approx(1 / 6) and "top5_error" not in d


def test_known_by_construction_and_fewer_classes_than_k():
    c, n = 4, 20
    labels = torch.arange(n) % c
    perfect = torch.nn.functional.one_hot(labels, c).float()
    shifted = torch.nn.functional.one_hot((labels + 1) % c, c).float() + 0.5 * perfect  # 2nd best is the truth
    ev = evaluate(Lookup(perfect), (indexed_images(n), labels), class_names=list("wxyz"))
    assert ev.top1_error == 0.0 and ev.top5_error == 0.0 and ev.hardest(1)[0]["accuracy"] == 1.0
    ev = evaluate(Lookup(shifted), (indexed_images(n), labels), class_names=list("wxyz"), k=5)
    assert ev.top1_error == 1.0 and ev.top_error(2) == 0.0
    assert ev.top5_error == 0.0  # fewer than 5 classes: every class is in the "top 5"
    assert ev.topk.shape == (n, c)
    assert ev.confusion.tolist() == [[0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5], [5, 0, 0, 0]]
    assert {(r["true"], r["predicted"], r["count"]) for r in ev.most_confused()} == \
        {("w", "x", 5), ("x", "y", 5), ("y", "z", 5), ("z", "w", 5)}


def test_labels_are_matched_to_the_model_classes_by_name():
    table = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    ds = ImageDataset(indexed_images(3), labels, ["a", "b", "c"], name="t")
    ds_perm = ImageDataset(indexed_images(3), torch.tensor([2, 0, 1]), ["b", "c", "a"], name="t")  # same truth
    m = Lookup(table)
    assert evaluate(m, ds).top1_error == 0.0
    assert evaluate(m, ds_perm, class_names=["a", "b", "c"]).top1_error == 0.0
    with pytest.raises(InputError, match="unknown 'q'"):
        evaluate(m, ImageDataset(indexed_images(3), labels, ["a", "b", "q"], name="t"), class_names=["a", "b", "c"])
    with pytest.raises(InputError, match="one score per class"):
        evaluate(m, (indexed_images(3), labels), class_names=["a", "b", "c", "d"])


def test_model_mode_is_restored_and_reports_serialize(tmp_path):
    m = Lookup(torch.eye(3)).train()
    ev = evaluate(m, (indexed_images(3), torch.tensor([0, 1, 1])), class_names=["a", "b", "c"])
    assert m.training
    text = repr(ev)
    assert "top-1 error" in text and "hardest classes" in text and "most confused" in text
    path = ev.save(tmp_path / "results" / "eval.json")
    d = json.loads(path.read_text())
    assert {"top1_error", "top5_error", "per_class", "confusion", "most_confused", "easiest", "hardest", "n"} <= set(d)
    assert d["per_class"] == {"a": 1.0, "b": 0.5, "c": None}  # no image of class c
    assert isinstance(ev, Evaluation)


def test_a_run_is_evaluated_through_its_normalization(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = (0.3 + 0.4 * torch.nn.functional.one_hot(labels, 3).float().view(60, 3, 1, 1).expand(60, 3, 8, 8)
              + 0.2 * torch.rand(60, 3, 8, 8, generator=g)).clamp(0, 1).contiguous()
    ds = ImageDataset(images, labels, ["r", "g", "b"], name="tiny")
    run = train("CONV3-4-RELU-POOL2,FC", ds, out=tmp_path / "run", epochs=2, batch_size=12, progress=False,
                device="cpu")
    ev = evaluate(run, ds)
    by_hand = (run.model(run.preprocess(images)).argmax(1) != labels).double().mean().item()
    assert ev.top1_error == pytest.approx(by_hand)
    assert evaluate(tmp_path / "run", ds).confusion.tolist() == ev.confusion.tolist()
    bare = load_run(tmp_path / "run" / "weights.safetensors", arch="CONV3-4-RELU-POOL2,FC", input_shape=(3, 8, 8),
                    mean=run.mean, std=run.std)  # a weight file that does not name its classes
    assert bare.class_names is None
    assert evaluate(bare, ds).confusion.tolist() == ev.confusion.tolist()


@pytest.mark.slow
def test_cli_train_then_evaluate_on_digits(tmp_path, capsys):
    out = tmp_path / "digits"
    main(["train", "--arch", "CONV3-8-RELU-POOL2,CONV3-8-RELU-POOL2,FC", "--data", "digits", "--out", str(out),
          "--epochs", "1", "--batch-size", "32", "--quiet", "--device", "cpu"])
    assert "test accuracy" in capsys.readouterr().out
    main(["train", "--arch", "CONV3-8-RELU-POOL2,CONV3-8-RELU-POOL2,FC", "--data", "digits", "--out", str(out),
          "--epochs", "1", "--batch-size", "32", "--quiet", "--device", "cpu"])
    assert "already trained" in capsys.readouterr().out
    main(["evaluate", str(out), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["n"] == 360 and len(d["per_class"]) == 10 and 0 <= d["top1_error"] < 0.9
    main(["evaluate", str(out)])
    assert "top-5 error" in capsys.readouterr().out


def test_cli_bad_input_exits_2_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        main(["evaluate", str(tmp_path / "missing")])
    assert ex.value.code == 2 and str(tmp_path / "missing") in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        main(["train", "--out", str(tmp_path / "r"), "--epochs", "0", "--quiet"])
    assert ex.value.code == 2 and "epochs must be a positive int" in capsys.readouterr().err


def _class_folder(root, classes=5, per_class=10):
    """``classes`` x ``per_class`` small PNGs, one flat colour per class (plus noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((8, 8, 3), 50 * c, np.uint8) + rng.integers(0, 30, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


def test_cli_evaluate_folder_says_its_split_and_scores_all_with_split_all(tmp_path, capsys):
    folder = _class_folder(tmp_path / "myfolder")
    files = sorted(folder.glob("*/*.png"))
    assert len(files) == 50
    out = tmp_path / "run"
    train("CONV3-4-RELU-POOL2,FC", str(folder), out=out, epochs=1, batch_size=10, progress=False, device="cpu")

    main(["evaluate", str(out), "--data", str(folder)])
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert "held-out test split" in first and "of the folder's 50 images" in first and ": 10 images" in first
    assert "--split all" in text

    main(["evaluate", str(out), "--data", str(folder), "--split", "all", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["n"] == len(files) == 50 and d["split"] == "all images, split 'all'"
    assert sum(sum(row) for row in d["confusion"]) == 50
    main(["evaluate", str(out), "--data", str(folder), "--split", "train", "--json"])
    assert json.loads(capsys.readouterr().out)["n"] == 40
    main(["evaluate", str(out), "--split", "all", "--json"])  # no --data: the run's own folder
    assert json.loads(capsys.readouterr().out)["n"] == 50

    readme = folder / "c2" / "README.txt"
    readme.write_text("how these images were made")
    with pytest.raises(SystemExit) as ex:
        main(["evaluate", str(out), "--data", str(folder), "--split", "all"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and str(readme) in err and "--on-error skip" in err
    with pytest.warns(UserWarning, match="README.txt"):
        main(["evaluate", str(out), "--data", str(folder), "--split", "all", "--on-error", "skip", "--json"])
    assert json.loads(capsys.readouterr().out)["n"] == 50


def test_split_of_given_images_is_refused():
    with pytest.raises(InputError, match="split must be 'test'"):
        evaluate(Lookup(torch.eye(2)), (indexed_images(2), torch.tensor([0, 1])), split="all", class_names=["a", "b"])


@pytest.mark.parametrize("world_size", [2, 3, 9])
def test_shards_merged_equal_one_process(world_size):
    """Each rank scores a run of whole batches (the last ranks may get none); merged in rank order they equal
    one process, and record how many processes made them."""
    g = torch.Generator().manual_seed(2)
    n, c = 37, 6
    table, labels = torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)
    data, names = (indexed_images(n), labels), [f"c{i}" for i in range(c)]
    whole = evaluate(Lookup(table), data, class_names=names, batch_size=5)
    parts = [evaluate(Lookup(table), data, class_names=names, batch_size=5, rank=r, world_size=world_size)
             for r in range(world_size)]
    assert sum(p.n for p in parts) == n and all(p.world_size == 1 for p in parts)
    merged = Evaluation.merge(parts)
    assert torch.equal(merged.topk, whole.topk) and torch.equal(merged.labels, whole.labels)
    a, b = whole.to_dict(), merged.to_dict()
    assert (a.pop("world_size"), b.pop("world_size")) == (1, world_size) and a == b
    with pytest.raises(InputError, match="rank must be"):
        evaluate(Lookup(table), data, class_names=names, rank=2, world_size=2)
