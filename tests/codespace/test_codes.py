"""The CNN code space: codes against a pre-hook oracle and convlens.features, exact neighbours against
brute-force numpy, t-SNE determinism, grid optimality against all permutations, the Projector files
against the format TensorBoard reads, the CLI and the report section."""
from __future__ import annotations

import itertools
import math
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens import DataError, InputError, ShapeError
from convlens.codespace.codes import Codes, code_layer, codes, pixel_codes, thumbnails
from convlens.codespace.neighbors import label_agreement, neighbors
from convlens.codespace.projector import export_projector, sprite_layout
from convlens.codespace.tsne_fit import best_scale, kl_divergence
from convlens.codespace.tsne_grid import cell_centres, normalized, tsne_grid

from conftest import FIXTURE_MODELS


# ---- oracles --------------------------------------------------------------------------------------------

def brute(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """(Q, N) float64 distances by the definitions, one pair at a time in numpy broadcasting."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    nq, nx = np.linalg.norm(q, axis=1), np.linalg.norm(x, axis=1)
    dot = q @ x.T
    denom = nq[:, None] * nx[None, :]
    return 1 - np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)


def brute_knn(x, q, k, metric, exclude=None):
    d = brute(x, q, metric)
    if exclude is not None:
        d[np.arange(len(q)), exclude] = np.inf
    idx = np.broadcast_to(np.arange(len(x)), d.shape)
    order = np.lexsort((idx, d), axis=1)[:, :k]  # by distance, ties by the lower index
    return order, np.take_along_axis(d, order, 1)


def classifier_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the last nn.Linear to run receives (a forward pre-hook on every Linear)."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen[-1].reshape(len(x), -1)


# ---- neighbours -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_neighbors_equal_brute_force_with_small_blocks(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(157, 12)).astype(np.float32)
    rows = np.array([0, 3, 77, 156, 3])
    nb = neighbors(x, rows, 9, metric, exclude_self=True, block=10, query_block=2)
    want_i, want_d = brute_knn(x, x[rows], 9, metric, exclude=rows)
    np.testing.assert_array_equal(nb.indices, want_i)
    np.testing.assert_allclose(nb.distances, want_d, rtol=1e-12, atol=1e-12)
    assert not (nb.indices == rows[:, None]).any()  # no query among its own neighbours
    q = rng.normal(size=(4, 12))  # query vectors (float64), codes as a torch tensor
    nb2 = neighbors(torch.from_numpy(x), q, 5, metric, block=16)
    want_i, want_d = brute_knn(x, q, 5, metric)
    np.testing.assert_array_equal(nb2.indices, want_i)
    np.testing.assert_allclose(nb2.distances, want_d, rtol=1e-12, atol=1e-12)
    assert len(nb2.query) == 0


def test_neighbors_ties_go_to_the_lower_index_across_blocks():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    dup = [7, 13, 22, 29, 41, 50, 58]
    for metric, scale in (("cosine", 2.0), ("l2", 1.0)):
        x[dup] = x[3] * scale  # the same direction (cosine ties) or the same point (l2 ties)
        for k in (2, 4, 7, 9):
            nb = neighbors(x, [3], k, metric, exclude_self=True, block=9, query_block=1)
            want, _ = brute_knn(x, x[[3]], k, metric, exclude=[3])
            np.testing.assert_array_equal(nb.indices, want)
            assert nb.indices[0, :min(k, 7)].tolist() == dup[:k]  # the duplicates first, the lowest rows first
    x[:] = 1.0  # everything tied: 0, 1, 2, ...
    assert neighbors(x, [10], 5, "l2", exclude_self=True, block=4).indices[0].tolist() == [0, 1, 2, 3, 4]


def test_neighbors_memmap_float64_zero_vectors_and_self(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 6))
    x[5] = 0.0  # a dead code: cosine distance 1 to everything
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    nb = neighbors(mm, np.arange(40), 39, "cosine", block=7)
    want_i, want_d = brute_knn(x, x, 39, "cosine")
    np.testing.assert_array_equal(nb.indices, want_i)
    np.testing.assert_allclose(nb.distances, want_d, atol=1e-12)
    assert np.allclose(nb.distances[5], 1.0)
    own = neighbors(x, [9], 1, "l2")  # without exclude_self a row is its own nearest, at distance 0
    assert own.indices[0, 0] == 9 and own.distances[0, 0] == 0.0


def test_neighbors_errors():
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    with pytest.raises(InputError, match="metric"):
        neighbors(x, [0], 2, "manhattan")
    with pytest.raises(InputError, match="k must be at most 9"):
        neighbors(x, [0], 10, exclude_self=True)
    with pytest.raises(InputError, match="exclude_self"):
        neighbors(x, x[:2], 2, exclude_self=True)
    with pytest.raises(InputError, match="row indices in"):
        neighbors(x, [10], 2)
    with pytest.raises(ShapeError, match="3 dimensions"):
        neighbors(x, np.zeros((1, 4)), 2)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(DataError, match="finite"):
        neighbors(bad, [0], 2)


def test_label_agreement_equals_a_loop():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    d = brute(x, x, "cosine")
    np.fill_diagonal(d, np.inf)
    share = np.mean([np.mean(y[np.lexsort((np.arange(50), d[i]))[:5]] == y[i]) for i in range(50)])
    assert label_agreement(x, y, k=5) == pytest.approx(share)


# ---- codes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_default_codes_are_what_the_classifier_receives(name):
    model = FIXTURE_MODELS[name]().train()  # left in train mode: codes run in eval mode and restore it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(7, *model.input_shape)
    c = codes(model, x, batch_size=3, progress=False)
    with convlens.taps.eval_mode(model):
        want = classifier_input(model, x)
    np.testing.assert_allclose(c.vectors, want.numpy(), rtol=1e-6, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert c.labels is None and c.indices.tolist() == list(range(7))


def test_default_layer_rule_names():
    tiny, gray, bn = (FIXTURE_MODELS[n]().eval() for n in ("tiny_resnet", "gray_net", "bn_net"))
    assert code_layer(tiny, torch.rand(2, 3, 16, 16)) == ("fc:input", "fc:input")  # fc(x.mean((2, 3)))
    assert code_layer(gray, torch.rand(2, 1, 20, 28)) == ("pool2", "pool2")  # fc(pool2(...).flatten(1))
    assert code_layer(bn, torch.rand(2, 3, 16, 16)) == ("classifier.3", "classifier.3")
    torch.manual_seed(0)
    net = convlens.parse("CONV3-8,RELU,POOL2,FC-32,RELU,DROPOUT,FC-16,RELU,FC-5", input_shape=(3, 16, 16)).eval()
    assert code_layer(net, torch.rand(2, 3, 16, 16)) == ("fc3", "relu3")  # the lecture's fc7: after its ReLU
    with pytest.raises(InputError, match="no nn.Linear"):
        code_layer(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.rand(1, 3, 8, 8))


def test_codes_equal_features_of_the_same_layer():
    torch.manual_seed(0)
    net = convlens.parse("CONV3-8,RELU,POOL2,CONV3-8,RELU,FC-16,RELU,FC-5", input_shape=(3, 16, 16)).eval()
    x, y = torch.rand(11, 3, 16, 16), torch.arange(11) % 5
    c = codes(net, (x, y), progress=False)
    assert (c.layer, c.tapped, c.pool) == ("fc3", "relu3", "flat")
    np.testing.assert_array_equal(c.vectors, convlens.features(net, x, "relu3", pool="flat", progress=False)["relu3"])
    assert c.labels.tolist() == y.tolist()
    conv = codes(net, x, "conv2", progress=False)  # a named layer: after its ReLU, per-channel mean
    assert (conv.tapped, conv.pool, conv.shape) == ("relu2", "avg", (8, 8, 8))
    np.testing.assert_array_equal(conv.vectors, convlens.features(net, x, "relu2", pool="avg", progress=False)["relu2"])
    inp = codes(net, x, "fc3:input", progress=False)  # what fc3 receives: conv2's ReLU output, flattened
    np.testing.assert_allclose(inp.vectors, convlens.features(net, x, "relu2", pool="flat", progress=False)["relu2"])
    with pytest.raises(convlens.LayerNotFoundError):
        codes(net, x, "conv9", progress=False)
    with pytest.raises(InputError, match="pool"):
        codes(net, x, pool="median", progress=False)


def test_codes_cache_reload_and_shards(tmp_path):
    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    x, y = torch.rand(10, 3, 16, 16), torch.arange(10) % 3
    whole = codes(model, (x, y), batch_size=3, progress=False)
    for rank in (1, 0):
        codes(model, (x, y), batch_size=3, out=tmp_path / "c", rank=rank, world_size=2, progress=False)
    back = Codes.load(tmp_path / "c", data=(x, y))
    np.testing.assert_array_equal(back.vectors, whole.vectors)
    assert (back.layer, back.tapped, back.pool) == ("fc:input", "fc:input", "flat")
    np.testing.assert_array_equal(back.labels, y.numpy())
    assert torch.equal(back.images([2, 5]), x[[2, 5]])
    saved = whole.subset([1, 4, 6]).save(tmp_path / "s")
    again = Codes.load(saved)
    assert isinstance(again.vectors, np.memmap) and again.indices.tolist() == [1, 4, 6]
    np.testing.assert_array_equal(again.vectors, whole.vectors[[1, 4, 6]])
    with pytest.raises(InputError, match="no source data"):
        again.images([0])
    with pytest.raises(DataError, match="codes.json"):
        Codes.load(tmp_path)


def test_pixel_codes_and_thumbnails():
    x = torch.rand(5, 1, 6, 8)
    px = pixel_codes((x, torch.zeros(5, dtype=torch.long)))
    np.testing.assert_array_equal(px.vectors, x.reshape(5, -1).numpy())
    t = thumbnails(x)
    assert t.shape == (5, 6, 8, 3) and t.dtype == np.uint8
    assert np.array_equal(t[..., 0], t[..., 2])  # gray -> RGB
    np.testing.assert_array_equal(t[..., 0], np.round(x[:, 0].numpy() * 255).astype(np.uint8))
    assert thumbnails(t, 3).shape == (5, 3, 4, 3)  # uint8 (N, H, W, C) in, height 3 keeping the aspect


# ---- t-SNE and the grid -------------------------------------------------------------------------------------

def _blobs(n_per=40, d=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(3, d))
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(3), n_per)


def test_tsne_is_deterministic_and_keeps_clusters():
    x, y = _blobs()
    a = convlens.tsne(x, perplexity=10, seed=3, pca_dims=10, n_iter=200, labels=y)
    b = convlens.tsne(x, perplexity=10, seed=3, pca_dims=10, n_iter=200, labels=y)
    assert a.embedding.shape == (120, 2) and np.isfinite(a.kl_divergence) and a.kl_divergence > 0
    np.testing.assert_array_equal(a.embedding, b.embedding)
    assert (a.pca_dims, a.input_dims, a.n_iter) == (10, 20, 450)
    assert label_agreement(a.embedding, y, k=5, metric="l2") > 0.95  # well-separated blobs stay apart
    c = convlens.tsne(x, perplexity=10, seed=4, pca_dims=10, n_iter=200)
    assert not np.allclose(a.embedding, c.embedding)
    with pytest.raises(InputError, match="perplexity"):
        convlens.tsne(x, perplexity=50)


def _exact_kl(p, y):
    """KL(P || Q) by brute force over all pairs (numpy), Q the Student-t affinities of layout y."""
    p = p.toarray()
    w = 1.0 / (1.0 + ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(w, 0.0)
    q = w / w.sum()
    keep = p > 0
    return float((p[keep] * np.log(p[keep] / q[keep])).sum())


def test_rescale_finds_the_kl_minimizing_scale():
    from openTSNE.affinity import PerplexityBasedNN

    x, _ = _blobs(n_per=30, d=5)
    p = PerplexityBasedNN(x.astype(np.float64), perplexity=8, method="exact", random_state=0, verbose=False).P
    xc = x - x.mean(0)
    y = xc @ np.linalg.svd(xc, full_matrices=False)[2][:2].T / 100  # a compact layout (PCA), like after exaggeration
    assert kl_divergence(y, p) == pytest.approx(_exact_kl(p, y), rel=2e-2)  # Barnes-Hut vs every pair
    s = best_scale(y, p)
    grid = np.geomspace(0.05, 200, 400)
    kls = [_exact_kl(p, y * g) for g in grid]
    best = grid[int(np.argmin(kls))]
    assert grid[0] < best < grid[-1]
    assert abs(math.log(s / best)) < 0.1  # the golden-section search lands on the brute-force minimum
    assert _exact_kl(p, y * s) <= min(kls) + 2e-3 and _exact_kl(p, y * s) < _exact_kl(p, y)


def test_tsne_gradient_methods_agree_in_quality():
    x, y = _blobs(n_per=50, d=8)
    for method in ("bh", "fft"):
        res = convlens.tsne(x, perplexity=10, n_iter=100, negative_gradient_method=method, labels=y)
        assert label_agreement(res.embedding, y, k=5, metric="l2") > 0.95 and res.scale > 0
    with pytest.raises(InputError, match="negative_gradient_method"):
        convlens.tsne(x, perplexity=10, negative_gradient_method="exact")


def test_tsne_result_round_trip_and_plots(tmp_path):
    x, y = _blobs(n_per=12, d=6)
    res = convlens.tsne(x, perplexity=5, n_iter=100, labels=y, class_names=["a", "b", "c"])
    back = type(res).load(res.save(tmp_path / "t.json"))
    np.testing.assert_array_equal(back.embedding, res.embedding)
    assert back.kl_divergence == res.kl_divergence and back.labels.tolist() == y.tolist()
    assert res._repr_png_()[:4] == b"\x89PNG"
    images = torch.rand(36, 3, 8, 8)
    assert res.plot_thumbnails(images, size=200, thumb=8) is not None
    assert res.grid().plot(images) is not None


def test_grid_is_optimal_against_every_permutation():
    rng = np.random.default_rng(5)
    for n, rows, cols in ((6, 3, 2), (5, 3, 2), (4, 2, 3)):
        emb = rng.normal(size=(n, 2))
        g = tsne_grid(emb, rows, cols)
        assert sorted(set(g.cells.tolist())) == sorted(g.cells.tolist()) and g.cells.max() < rows * cols
        pts, centres = normalized(emb), cell_centres(rows, cols)
        cost = lambda cells: float(((pts - centres[list(cells)]) ** 2).sum())  # noqa: E731
        best = min(cost(p) for p in itertools.permutations(range(rows * cols), n))
        assert g.cost == pytest.approx(best) and cost(g.cells) == pytest.approx(best)
    with pytest.raises(InputError, match="at least 7 cells"):
        tsne_grid(rng.normal(size=(7, 2)), 3, 2)


def test_grid_layout_and_mosaic():
    emb = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])  # corners: top-left, top-right, ...
    g = tsne_grid(emb, 2, 2)
    assert g.positions.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]  # y up -> row 0 at the top
    images = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.25, 0.5, 1.0)])
    mosaic = g.mosaic(images)
    assert mosaic.shape == (8, 8, 3)
    assert mosaic[0, 4, 0] == 64 and mosaic[4, 0, 0] == 128 and mosaic[7, 7, 0] == 255
    g5 = tsne_grid(np.random.default_rng(0).normal(size=(5, 2)))  # default: 3 columns, 2 rows
    assert (g5.rows, g5.cols) == (2, 3)


# ---- the Projector folder -----------------------------------------------------------------------------------

def _pbtxt(text: str) -> dict:
    """A minimal protobuf text-format reader for the projector config (nested blocks, repeated fields)."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}]|[A-Za-z_]+:?|-?\d+', text)
    def block(i):
        out = {}
        while i < len(tokens) and tokens[i] != "}":
            key = tokens[i].rstrip(":")
            if tokens[i + 1] == "{":
                value, i = block(i + 2)
                i += 1
            else:
                raw = tokens[i + 1]
                value, i = (raw[1:-1] if raw.startswith('"') else int(raw)), i + 2
            out.setdefault(key, []).append(value)
        return out, i
    return block(0)[0]


def test_projector_files_match_the_format(tmp_path):
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(11, 5)).astype(np.float32)
    c = Codes(vec, np.arange(100, 111), np.arange(11) % 3, "fc7", "relu7", "flat", class_names=["cat", "dog\tx", "ox"])
    images = torch.rand(11, 3, 6, 9)
    out = export_projector(c, tmp_path / "p", images=images)
    lines = (tmp_path / "p" / "tensors.tsv").read_text().splitlines()
    assert len(lines) == 11 and all(len(line.split("\t")) == 5 for line in lines)
    np.testing.assert_array_equal(np.array([[float(v) for v in line.split("\t")] for line in lines], np.float32), vec)
    meta = (tmp_path / "p" / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "index\tlabel\tclass" and len(meta) == 12  # several columns: one header row
    assert meta[2] == "101\tdog x\t1" and all(len(m.split("\t")) == 3 for m in meta)
    from PIL import Image

    sprite = np.asarray(Image.open(tmp_path / "p" / "sprite.png").convert("RGB"))
    per_row = math.ceil(math.sqrt(11))
    assert out.per_row == per_row and out.tile == (9, 6) and sprite.shape == (per_row * 6, per_row * 9, 3)
    thumbs = thumbnails(images)
    for i in range(11):
        r, col = divmod(i, per_row)
        np.testing.assert_array_equal(sprite[r * 6:(r + 1) * 6, col * 9:(col + 1) * 9], thumbs[i])
    assert (sprite[2 * 6:, 3 * 9:] == 255).all()  # the 16 - 11 tiles left over stay white
    cfg = _pbtxt((tmp_path / "p" / "projector_config.pbtxt").read_text())
    emb = cfg["embeddings"][0]
    assert emb["tensor_name"] == ["fc7 codes"] and emb["tensor_path"] == ["tensors.tsv"]
    assert emb["tensor_shape"] == [11, 5] and emb["metadata_path"] == ["metadata.tsv"]
    assert emb["sprite"][0] == {"image_path": ["sprite.png"], "single_image_dim": [9, 6]}


def test_projector_binary_single_column_and_sprite_limits(tmp_path):
    vec = np.random.default_rng(1).normal(size=(7, 3))
    out = export_projector(vec, tmp_path / "b", tensor_format="binary")
    raw = np.fromfile(tmp_path / "b" / "tensors.bytes", dtype="<f4")
    np.testing.assert_array_equal(raw.reshape(7, 3), vec.astype(np.float32))
    assert (tmp_path / "b" / "metadata.tsv").read_text().splitlines() == [str(i) for i in range(7)]  # no header
    assert "sprite" not in out.files and "sprite" not in (tmp_path / "b" / "projector_config.pbtxt").read_text()
    assert sprite_layout(20000, (64, 64)) == (142, (57, 57))  # 142 * 57 = 8094 <= 8192
    assert sprite_layout(100, (32, 64)) == (10, (64, 32))
    assert sprite_layout(100, (64, 64), tile=16) == (10, (16, 16))
    with pytest.raises(InputError, match="tensor_format"):
        export_projector(vec, tmp_path / "x", tensor_format="csv")


# ---- CLI and report -----------------------------------------------------------------------------------------

@pytest.fixture
def run_copy(small_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(small_run.dir, dst, ignore=shutil.ignore_patterns("results", "report", "codes"))
    return dst


def test_cli_commands_and_report_section(run_copy, tmp_path, capsys):
    from convlens.cli import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.codes import codes as section

    main(["codes", str(run_copy), "--quiet"])
    out = capsys.readouterr().out
    assert "pixels" in out and "<- CNN code" in out and (run_copy / "results" / "codes-agreement.json").is_file()
    main(["neighbors", str(run_copy), "--index", "0", "--index", "5", "--k", "4", "--quiet",
          "--png", str(tmp_path / "nb.png")])
    out = capsys.readouterr().out
    assert "query 0" in out and "query 5" in out and (tmp_path / "nb.png").read_bytes()[:4] == b"\x89PNG"
    main(["tsne", str(run_copy), "--n", "120", "--perplexity", "10", "--grid", "11x11", "--quiet",
          "--projector", str(tmp_path / "proj")])
    out = capsys.readouterr().out
    assert "t-SNE of" in out and "11x11" in out and (tmp_path / "proj" / "projector_config.pbtxt").is_file()
    loaded = convlens.load_run(run_copy)
    sec = section(ReportContext(loaded, run_copy / "report"))
    figures = [b.name for b in sec.blocks if b.kind == "figure"]
    assert figures == ["neighbors", "agreement", "tsne", "tsne-map", "tsne-grid"]
    assert all(b.png[:4] == b"\x89PNG" for b in sec.blocks if b.kind == "figure")
    with pytest.raises(SystemExit) as err:
        main(["neighbors", str(run_copy), str(tmp_path / "nb.png"), "--index", "1"])
    assert err.value.code == 2


def test_section_absent_without_results(small_run, tmp_path):
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.codes import codes as section

    fresh = tmp_path / "fresh"
    shutil.copytree(small_run.dir, fresh, ignore=shutil.ignore_patterns("results", "report", "codes"))
    assert section(ReportContext(convlens.load_run(fresh), fresh / "report")) is None


@pytest.mark.slow
def test_demo_codes_on_the_demo_run(demo_run_dir):
    from convlens.cli.codes_cmds import demo_codes
    from convlens.io import read_json

    demo_codes(demo_run_dir)
    agreement = read_json(demo_run_dir / "results" / "codes-agreement.json")
    rows = {r["layer"]: r["agreement"] for r in agreement["rows"]}
    assert agreement["code_layer"] == "gap4" and rows["gap4"] > 0.9 > 0.3 > rows["pixels"]
    tsne = read_json(demo_run_dir / "results" / "codes-tsne.json")
    assert tsne["n"] == 1000 and tsne["grid"]["rows"] * tsne["grid"]["cols"] == 1024
