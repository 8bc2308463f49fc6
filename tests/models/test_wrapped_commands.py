"""Every command on a model convlens did not build: a hand-written ResNet (``user_resnet.py``: ``F.relu``,
BatchNorm, residual additions, a strided 1x1 projection shortcut) wrapped twice, from its code
(``user_resnet.py:make``) and from a ``.pt2`` program (loaded without code, unflattened).

The oracle is the Python API on the *eager* model: ``dataclasses.replace(load_run(RUN), model=make())``
has the run's manifest, data, normalization and class names but the user's own module. Each command runs
in-process (``convlens.cli.app.main``) with its cheapest options; the result it saves in ``RUN/results``
(JSON and NPZ) must equal, within float tolerance, what the library call the command wraps returns on the
eager model with the same options and images, written by the same results-registry format.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens.cli.app import main
from convlens.results.registry import analysis, imported
from convlens.training.runs import Run

import user_resnet

FACTORY = Path(__file__).with_name("user_resnet.py")
VOLATILE = {"timing", "seconds"}  # wall-clock times: never equal twice
SINGLE = dict(rtol=1e-4, atol=1e-5)  # one forward (or backward) of the same weights
OPTIMIZED = dict(rtol=1e-3, atol=1e-4)  # a few optimization steps from the same seed


# ---- running the CLI and reading what it saved ----------------------------------------------------------

def cli(*argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``convlens ARGV`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
    return code, out.getvalue(), err.getvalue()


def ok(*argv) -> tuple[str, str]:
    code, out, err = cli(*argv)
    assert code == 0, f"convlens {' '.join(map(str, argv))} exited {code}:\n{err[-3000:]}"
    return out, err


def saved_paths(text: str) -> list[Path]:
    """The paths of every ``saved: A (+ .npz, .png), B`` line."""
    lines = [re.sub(r" \([^)]*\)", "", line[len("saved: "):])
             for line in text.splitlines() if line.startswith("saved: ")]
    return [Path(item) for line in lines for item in line.split(", ")]


def saved_result(text: str, name: str) -> Path:
    """The JSON of result ``name`` (``RUN/results/name.json`` or ``name@KEY.json``) among the saved paths."""
    found = [p for p in saved_paths(text) if p.suffix == ".json" and p.stem.split("@")[0] == name]
    assert len(found) == 1, f"no single saved {name}.json in: {text[-1000:]}"
    assert found[0].is_file()
    return found[0]


def read_result(path: Path) -> tuple[dict, dict]:
    """(the JSON, the arrays of the .npz beside it, if any)."""
    meta = json.loads(path.read_text())
    npz = path.with_suffix(".npz")
    if not npz.is_file():
        return meta, {}
    with np.load(npz) as z:
        return meta, {k: z[k] for k in z.files}


def oracle_files(name: str, value, tmp_path: Path) -> tuple[dict, dict]:
    """``value`` (the library's result on the eager model) written as the results registry writes ``name``."""
    path = tmp_path / "oracle" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    imported(analysis(name).save)(path, value)
    return read_result(path)


def assert_close(got, want, *, rtol: float, atol: float, where: str = "result") -> None:
    """``got`` equals ``want``: dicts key by key (wall-clock times skipped), lists item by item, floats within
    tolerance (NaN equal to NaN), everything else exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__}, expected a dict"
        keys = set(want) - VOLATILE
        assert set(got) - VOLATILE == keys, f"{where}: keys differ: {sorted(set(got) ^ set(want))}"
        for key in sorted(keys):
            assert_close(got[key], want[key], rtol=rtol, atol=atol, where=f"{where}.{key}")
    elif isinstance(want, (list, tuple, np.ndarray)):
        want_a, got_a = np.asarray(want), np.asarray(got)
        if want_a.dtype.kind in "fiub" and got_a.dtype.kind in "fiub" and want_a.dtype != object:
            assert got_a.shape == want_a.shape, f"{where}: shape {got_a.shape}, expected {want_a.shape}"
            if want_a.dtype.kind == "f" or got_a.dtype.kind == "f":
                np.testing.assert_allclose(got_a.astype(np.float64), want_a.astype(np.float64), rtol=rtol,
                                           atol=atol, equal_nan=True, err_msg=where)
            else:
                np.testing.assert_array_equal(got_a, want_a, err_msg=where)
        else:
            assert isinstance(got, (list, tuple, np.ndarray)) and len(got) == len(want), \
                f"{where}: {got!r:.200} is not a sequence of {len(want)}"
            for i, (g, w) in enumerate(zip(got, want)):
                assert_close(g, w, rtol=rtol, atol=atol, where=f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        assert (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=rtol, abs_tol=atol), \
            f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r:.300} != {want!r:.300}"


def assert_same_result(cli_json: Path, name: str, value, tmp_path: Path, **tol) -> tuple[dict, dict]:
    """The command's saved result ``name`` equals ``value`` (the library's, on the eager model) saved alike."""
    got, got_arrays = read_result(cli_json)
    want, want_arrays = oracle_files(name, value, tmp_path)
    assert_close(got, want, where=name, **tol)
    assert sorted(got_arrays) == sorted(want_arrays), f"{name}.npz arrays differ"
    for key, arr in want_arrays.items():
        assert_close(got_arrays[key], arr, where=f"{name}.npz[{key}]", **tol)
    return got, got_arrays


# ---- the wrapped runs ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """10 class folders x 6 PNGs of 32x32 shapes: the runs' test data."""
    root = tmp_path_factory.mktemp("shapes32")
    ds = convlens.datasets.load("shapes", split="test", n=60, size=(32, 32))
    for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
        folder = root / ds.class_names[int(label)]
        folder.mkdir(exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, C)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory) -> Path:
    """``make()`` exported with a dynamic batch and saved by ``torch.export.save``."""
    path = tmp_path_factory.mktemp("export") / "resnet.pt2"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(user_resnet.make(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(path))
    return path


@dataclasses.dataclass
class Wrapped:
    kind: str  # "factory" or "pt2"
    source: str  # what `convlens wrap` was given
    dir: Path  # the run directory
    folder: Path  # the image folder given as --data
    eager: Run  # the run's manifest, data, normalization and class names around make()'s own module
    data: object  # the run's test split (ImageDataset)


@pytest.fixture(scope="module", params=["factory", "pt2"])
def wrapped(request, image_folder, pt2_file, tmp_path_factory) -> Wrapped:
    source = f"{FACTORY}:make" if request.param == "factory" else str(pt2_file)
    run_dir = tmp_path_factory.mktemp(f"wrapped-{request.param}") / "run"
    out, _ = ok("wrap", source, "--out", run_dir, "--input", "32x32x3", "--data", image_folder,
                "--mean", "0.5", "--std", "0.25")
    assert saved_paths(out) == [run_dir]
    loaded = convlens.load_run(run_dir)
    eager = dataclasses.replace(loaded, model=user_resnet.make(), _pixel=None)
    spec = loaded.manifest["data"]["test"]["spec"]
    return Wrapped(request.param, source, run_dir, image_folder, eager, convlens.datasets.load(**spec))


# ---- wrap, summary, evaluate ---------------------------------------------------------------------------

def test_wrap_records_the_model_its_input_normalization_classes_and_data(wrapped, pt2_file):
    manifest = json.loads((wrapped.dir / "run.json").read_text())
    source = manifest["arch"]["source"]
    if wrapped.kind == "factory":
        assert source == {"kind": "factory", "ref": f"{FACTORY.resolve()}:make"}
    else:  # the program is copied into the run directory
        assert source == {"kind": "export", "file": "model.pt2", "original": str(pt2_file.resolve())}
        assert (wrapped.dir / "model.pt2").read_bytes() == pt2_file.read_bytes()
    assert manifest["status"] == "wrapped" and manifest["wrapped"]["source"] == wrapped.source
    assert manifest["arch"]["class"] == "ResNetLike" and manifest["arch"]["num_classes"] == 10
    assert manifest["input_shape"] == [3, 32, 32]
    assert manifest["normalization"] == {"mean": [0.5], "std": [0.25]}
    classes = sorted(p.name for p in wrapped.folder.iterdir())
    assert manifest["class_names"] == classes  # from the folder's sub-folders
    test = manifest["data"]["test"]
    assert Path(test["source"]) == wrapped.folder.resolve() and test["size"] == 60 and test["class_names"] == classes

    # the run loads back as the same weights (strictly) and the same function of [0, 1] pixels
    run = convlens.load_run(wrapped.dir)
    assert run.class_names == classes and run.input_shape == (3, 32, 32)
    mine, theirs = wrapped.eager.model.state_dict(), run.model.state_dict()
    assert sorted(theirs) == sorted(mine)
    assert all(torch.equal(theirs[k], v) for k, v in mine.items())
    x = wrapped.data.images[:8]
    with torch.no_grad():
        want = user_resnet.make()((x - 0.5) / 0.25)  # the normalization written out by hand
        torch.testing.assert_close(run.pixel_model()(x), want, **SINGLE)
        torch.testing.assert_close(wrapped.eager.pixel_model()(x), want, **SINGLE)


def test_summary_and_evaluate_equal_the_eager_models(wrapped):
    out, _ = ok("summary", wrapped.dir, "--json")
    got, want = json.loads(out), convlens.summary(wrapped.eager).to_dict()
    if wrapped.kind == "pt2":
        # torch.export records no module for a call that runs no op: an nn.Identity shortcut is absent from
        # the unflattened program (no parameters, no mult-adds, memory not counted), so it has no row
        identity = {r["path"] for r in want["layers"] if r["type"] == "Identity"}
        assert identity == {"block1.shortcut"}
        want["layers"] = [r for r in want["layers"] if r["path"] not in identity]
    assert_close(got, want, where="summary", rtol=0, atol=0)

    out, _ = ok("evaluate", wrapped.dir, "--json")
    evaluation = convlens.evaluate(wrapped.eager)
    assert_close(json.loads(out), evaluation.to_dict(), where="evaluate", **SINGLE)
    assert evaluation.n == 60 and (np.asarray(evaluation.confusion).sum(0) > 0).sum() > 1  # several classes predicted

    # --data given again: a folder without train/ and test/ sub-folders is scored on its held-out 20%
    out, _ = ok("evaluate", wrapped.dir, "--json", "--data", wrapped.folder)
    evaluation = convlens.evaluate(wrapped.eager, str(wrapped.folder))
    assert_close(json.loads(out), evaluation.to_dict(), where="evaluate --data", **SINGLE)
    assert evaluation.n == 10  # one image of each class (20% of 6, rounded down to at least one)


# ---- insight: health, probe, invariance ----------------------------------------------------------------

def test_health_probe_and_invariance_equal_the_eager_models(wrapped, tmp_path):
    eager = wrapped.eager
    out, _ = ok("health", wrapped.dir, "--max-samples", "20")
    got, _ = assert_same_result(saved_result(out, "health"), "health",
                                convlens.health(eager, max_samples=20, progress=False), tmp_path, **SINGLE)

    out, _ = ok("probe", wrapped.dir, "--layers", "block1.conv1,fc", "--per-class", "2", "--repeats", "1",
                "--classifiers", "softmax")
    got, _ = assert_same_result(saved_result(out, "probe"), "probe",
                                convlens.probe(eager, layers=["block1.conv1", "fc"], per_class=(2,), repeats=1,
                                               classifiers=["softmax"], progress=False), tmp_path, **SINGLE)
    assert got["layers"] == ["block1.conv1", "fc"]

    out, _ = ok("invariance", wrapped.dir, "--n", "2", "--amounts", "0,2", "--layers", "block1.conv1,fc")
    got, _ = assert_same_result(saved_result(out, "invariance-translate"), "invariance-translate",
                                convlens.invariance(eager, transform="translate", amounts=[0.0, 2.0],
                                                    layers=["block1.conv1", "fc"], n_images=2), tmp_path, **SINGLE)
    distance = np.asarray(got["distance"])  # (layers, amounts, images)
    assert distance.shape == (2, 2, 2) and (distance[:, 0] == 0).all() and (distance[:, 1] > 0).all()


# ---- units: filters, top patches, saliency, occlusion --------------------------------------------------

def test_filters_and_top_patches_equal_the_eager_models(wrapped, tmp_path):
    out, _ = ok("filters", wrapped.dir)
    got, _ = assert_same_result(saved_result(out, "filters"), "filters", convlens.filters(wrapped.eager), tmp_path,
                                rtol=1e-6, atol=1e-7)
    assert got["layer"] == "stem"
    assert [d["name"] for d in got["layers"]] == ["stem", "block1.conv1", "block1.conv2", "block2.conv1",
                                                  "block2.conv2", "block2.shortcut.0"]
    assert any(p.suffix == ".png" and p.is_file() for p in saved_paths(out))

    out, _ = ok("top-patches", wrapped.dir, "--layer", "block2.conv2", "--k", "2", "--units", "0,1")
    got, arrays = assert_same_result(
        saved_result(out, "top-patches"), "top-patches",
        convlens.top_patches(wrapped.eager, None, ["block2.conv2"], k=2, units=[0, 1], progress=False), tmp_path,
        **SINGLE)
    # each unit's best images really are the strongest: their activation recomputed on the eager model
    seen = []
    hook = wrapped.eager.model.block2.conv2.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            wrapped.eager.pixel_model()(wrapped.data.images)
    finally:
        hook.remove()
    best = seen[0][:, :2].amax((2, 3))  # (60, 16, 16, 16) -> (60, 2): units 0 and 1 at their strongest
    np.testing.assert_allclose(arrays["values_0"], best.topk(2, dim=0).values.T.numpy(), **SINGLE)


def test_saliency_deconvnet_and_guided_backprop_equal_the_eager_models(wrapped, tmp_path):
    for method in ("saliency", "deconvnet", "guided"):
        out, _ = ok("saliency", wrapped.dir, "--n", "2", "--method", method)
        figure = [p for p in saved_paths(out) if p.suffix == ".png"]
        assert len(figure) == 1 and figure[0].name.endswith(f"-{method}.png") and figure[0].is_file()
    got, arrays = read_result(saved_result(out, "saliency"))
    rows = got["indices"]
    x = wrapped.data.images[rows]  # (2, 3, 32, 32)
    np.testing.assert_array_equal(arrays["images"], x.numpy())
    with torch.no_grad():
        predicted = wrapped.eager.pixel_model()(x).argmax(1).tolist()
    assert got["targets"] == got["predicted"] == predicted
    eager = wrapped.eager
    np.testing.assert_allclose(arrays["saliency"], convlens.saliency(eager, x).numpy(), **SINGLE)
    np.testing.assert_allclose(arrays["deconvnet"], convlens.deconvnet(eager, x).numpy(), **SINGLE)
    np.testing.assert_allclose(arrays["guided"], convlens.guided_backprop(eager, x).numpy(), **SINGLE)
    np.testing.assert_array_equal(arrays["masks"], convlens.segment(eager, x).numpy())
    assert np.abs(arrays["guided"]).sum() > 0 and np.abs(arrays["deconvnet"] - arrays["guided"]).max() > 0


def test_occlusion_equals_the_eager_models(wrapped, tmp_path):
    out, _ = ok("occlusion", wrapped.dir, "--index", "0", "--window", "16", "--stride", "8")
    got, _ = read_result(saved_result(out, "occlusion"))
    (m,) = got["maps"]
    # the default layer is the last Conv2d registered (the strided block's 1x1 shortcut), named as in the user's code
    layer = "block2.shortcut.0"
    want = convlens.occlusion(wrapped.eager, wrapped.data.images[0], None, 16, 8, 0.5, layer)
    want = dataclasses.replace(want, label=int(wrapped.data.labels[0]), index=0).to_dict()
    numbers = ["window", "stride", "baseline", "target", "p_clean", "clean_class", "label", "index", "unit",
               "activation_clean", "rows", "cols", "p_target", "top_class", "top_prob", "activation", "class_names"]
    assert_close({k: m[k] for k in numbers}, {k: want[k] for k in numbers}, where="occlusion", **SINGLE)
    assert len(m["rows"]) == len(m["cols"]) == 3
    # the layer as the user's code names it, not the run's wrapper path ("net.block2.shortcut.0")
    assert m["layer"] == layer


# ---- synthesis: class model, unit model, fooling, inversion, adversarial -------------------------------

def test_class_model_unit_model_and_fooling_equal_the_eager_models(wrapped, tmp_path):
    eager = wrapped.eager
    out, _ = ok("class-model", wrapped.dir, "--class", "3", "--seeds", "1", "--steps", "5")
    assert_same_result(saved_result(out, "class-model"), "class-model",
                       convlens.class_model(eager, [3], n_seeds=1, steps=5), tmp_path, **OPTIMIZED)

    out, _ = ok("class-model", wrapped.dir, "--layer", "block1.conv1", "--unit", "0,1", "--seeds", "1",
                "--steps", "5")
    assert_same_result(saved_result(out, "unit-model"), "unit-model",
                       convlens.class_model(eager, None, layer="block1.conv1", unit=[0, 1], n_seeds=1, steps=5),
                       tmp_path, **OPTIMIZED)

    out, _ = ok("fooling", wrapped.dir, "--class", "3", "--steps", "5")
    assert_same_result(saved_result(out, "fooling-gradient"), "fooling-gradient",
                       convlens.fooling_image(eager, [3], method="gradient", steps=5), tmp_path, **OPTIMIZED)


def test_invert_and_adversarial_equal_the_eager_models(wrapped, tmp_path):
    eager, data = wrapped.eager, wrapped.data
    out, _ = ok("invert", wrapped.dir, "--index", "0", "--steps", "5", "--layers", "block1.conv1",
                "--quadrants", "none")
    x = data.images[[0]]  # (1, 3, 32, 32)
    assert_same_result(saved_result(out, "inversion"), "inversion",
                       (x, convlens.invert(eager, x, ["block1.conv1"], steps=5)), tmp_path, **OPTIMIZED)

    out, _ = ok("adversarial", wrapped.dir, "--index", "0", "--index", "7", "--method", "pgd", "--steps", "3")
    x, labels = data.images[[0, 7]], torch.as_tensor(data.labels)[[0, 7]]
    got, _ = assert_same_result(saved_result(out, "adversarial"), "adversarial",
                                convlens.adversarial(eager, x, None, method="pgd", steps=3, labels=labels,
                                                     indices=(0, 7)), tmp_path, **OPTIMIZED)
    assert max(got["linf"]) <= 8 / 255 + 1e-6

    # L-BFGS towards the last class (the command's default target), with the command's 5 line-search steps
    out, _ = ok("adversarial", wrapped.dir, "--index", "0", "--method", "lbfgs", "--steps", "3", "--c", "0.1")
    x, labels = data.images[[0]], torch.as_tensor(data.labels)[[0]]
    got, _ = assert_same_result(saved_result(out, "adversarial"), "adversarial",
                                convlens.adversarial(eager, x, eager.class_names[-1], method="lbfgs", steps=3, c=0.1,
                                                     labels=labels, indices=(0,), search_steps=5),
                                tmp_path, **OPTIMIZED)
    assert got["target"] == [9] and eager.class_names[9] == "triangle"


# ---- the code space: codes, neighbours, t-SNE ----------------------------------------------------------

def test_codes_neighbors_and_tsne_equal_the_eager_models(wrapped, tmp_path):
    from convlens.codespace.codes import Codes

    eager = wrapped.eager
    out, err = ok("codes", wrapped.dir, "--json")
    printed = json.loads(out)
    cached = Codes.load(printed["codes"]["folder"])
    code = convlens.codes(eager, progress=False)  # in memory, from the eager model
    assert (cached.layer, cached.tapped, cached.pool) == (code.layer, code.tapped, code.pool)
    assert (code.layer, code.pool) == ("fc:input", "flat")  # the Linear head's input, as fc(x.mean((2, 3))) has it
    np.testing.assert_allclose(np.asarray(cached.vectors), code.vectors, **SINGLE)
    np.testing.assert_array_equal(cached.labels, code.labels)
    np.testing.assert_array_equal(cached.indices, code.indices)
    with torch.no_grad():  # the classifier's input, by hand: the mean of the last block's output
        m = eager.model
        x = (wrapped.data.images - 0.5) / 0.25
        by_hand = m.block2(m.block1(torch.relu(m.bn(m.stem(x))))).mean((2, 3))  # (60, 16)
    np.testing.assert_allclose(code.vectors, by_hand.numpy(), **SINGLE)

    got, _ = assert_same_result(saved_result(err, "codes-agreement"), "codes-agreement",
                                convlens.agreement_by_layer(eager, code.data, k=5), tmp_path, **SINGLE)
    agreement_names = json.dumps(got)

    out, _ = ok("neighbors", wrapped.dir, "--k", "3", "--queries", "2")
    meta, arrays = read_result(saved_result(out, "codes-neighbors"))
    labels = np.asarray(wrapped.data.labels)
    rows = [int(np.flatnonzero(labels == labels[0])[0]), int(np.flatnonzero(labels != labels[0])[0])]
    assert arrays["query_rows"].tolist() == rows  # the first image of each of the first two classes
    nb = convlens.neighbors(code, rows, 3, "cosine", exclude_self=True)
    pn = convlens.neighbors(convlens.pixel_codes(code.data), rows, 3, "l2", exclude_self=True)
    np.testing.assert_array_equal(arrays["code_indices"], nb.indices)
    np.testing.assert_allclose(arrays["code_distances"], nb.distances, **SINGLE)
    np.testing.assert_array_equal(arrays["pixel_indices"], pn.indices)
    np.testing.assert_allclose(arrays["pixel_distances"], pn.distances, **SINGLE)
    assert meta["k"] == 3 and meta["metric"] == "cosine" and meta["n"] == 60

    out, _ = ok("tsne", wrapped.dir, "--n", "60", "--perplexity", "5", "--grid", "none")
    meta, arrays = read_result(saved_result(out, "codes-tsne"))
    want = convlens.tsne(code, perplexity=5, seed=0)
    assert_close({k: v for k, v in meta.items() if k not in ("grid", "projector")}, want.to_dict(), where="tsne",
                 **OPTIMIZED)
    np.testing.assert_allclose(arrays["embedding"], want.embedding, **OPTIMIZED)
    np.testing.assert_array_equal(arrays["indices"], np.arange(60))

    # layers named as the user's code names them, as every other command does (not "net.fc:input", "net.stem")
    assert not code.tapped.startswith("net."), code.tapped
    assert '"net.' not in agreement_names, agreement_names[:300]


# ---- the report, and the one command that cannot work ----------------------------------------------------

def test_report_shows_the_eager_models_numbers(wrapped):
    ok("health", wrapped.dir, "--max-samples", "20")  # one analysis besides the architecture and evaluation
    out, _ = ok("report", wrapped.dir)
    path = Path(out.strip().splitlines()[-1].removeprefix("report: "))
    assert path.is_file() and path.parent.name == "report"
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", "", path.read_text())))
    evaluation = convlens.evaluate(wrapped.eager)
    summary = convlens.summary(wrapped.eager)
    assert f"{100 * evaluation.top1_error:.2f}% top-1 error" in text
    assert f"{summary.total_params:,} parameters" in text and f"{summary.total_macs:,} multiply-adds" in text
    assert "block2.shortcut.0" in text
    # the user's class, also for the .pt2 run (not the unflattened module's class)
    assert "ResNetLike" in text
    assert "UnflattenedModule" not in text and "PixelModel" not in text and "ExportedProgram" not in text


def test_ablate_says_why_it_cannot_rewire_the_users_model(wrapped):
    code, _, err = cli("ablate", wrapped.dir, "--remove", "block1.conv1")
    assert code == 2 and err.startswith("error: ")
    with pytest.raises(convlens.ConvLensError) as info:
        convlens.ablate(wrapped.eager, ["block1.conv1"], progress=False)
    assert err.strip() == f"error: {info.value}"  # the CLI says what the library says of the eager model
    # names the user's class, never a wrapper convlens put around it (PixelModel) or the .pt2 loader's
    # UnflattenedModule, and lists the layers that could have been removed
    assert "ResNetLike" in err and "PixelModel" not in err and "UnflattenedModule" not in err
    assert "stem, block1.conv1, block1.conv2, block2.conv1, block2.conv2, block2.shortcut.0, fc" in err
    assert not (wrapped.dir / "ablation").exists()
