"""top_patches(): equal to a brute-force top-k over all activations in memory; one pass == separate passes;
resumed == uninterrupted; sharded (in process and with 2 gloo processes) == one process; boxes == the
gradient probe; crops have the box's size; the model is left as found."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens import TopPatches, capture, receptive_field, top_patches
from convlens.data.dataset import ImageDataset
from convlens.errors import DataError, InputError, LayerNotFoundError
from conftest import hooks_left
from conftest import run_gloo_workers


def tie_data(n=23, shape=(3, 16, 16)):
    """Random images with exact duplicates (ties in every unit) at later rows (n >= 12)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n - 5, *shape, generator=g)
    return torch.cat([x[:7], x[2:4], x[7:], x[:3]])  # rows 7, 8 repeat 2, 3; the last 3 repeat 0, 1, 2


def dead_unit_resnet(model):
    """Channel 0 of ``layer1`` is 0 everywhere: stem channel 0 silenced, layer1's bn2 pushes it below 0."""
    with torch.no_grad():
        model.stem.weight[0] = 0
        model.stem.bias[0] = 0
        model.layer1.bn2.weight[0] = 0
        model.layer1.bn2.bias[0] = -100
    return model


def brute_force(model, x, layer, k, batch_size):
    """All activations in memory (the same batches), per (unit, image) the max and its first position in
    row-major order (numpy), then the images sorted by (-value, index) in Python."""
    maps = []
    with torch.no_grad(), capture(model, [layer]) as acts:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
            maps.append(acts[layer].clone())
    a = torch.cat(maps).numpy()                                   # (N, C, H, W) or (N, D)
    a = a.reshape(a.shape[0], a.shape[1], -1)                     # (N, C, S)
    w = maps[0].shape[3] if maps[0].dim() == 4 else 1
    best = a.max(axis=2)                                          # (N, C)
    first = (a == best[..., None]).argmax(axis=2)                 # (N, C): first True
    values = np.full((a.shape[1], k), np.nan)
    indices = np.full((a.shape[1], k), -1)
    positions = np.full((a.shape[1], k, 2), -1)
    for u in range(a.shape[1]):
        order = sorted(range(a.shape[0]), key=lambda n: (-float(best[n, u]), n))[:k]
        values[u, :len(order)] = best[order, u]
        indices[u, :len(order)] = order
        positions[u, :len(order)] = [(first[n, u] // w, first[n, u] % w) for n in order]
    return values, indices, positions


def assert_equals_brute(tp, model, x, layer, tapped, batch_size, units=None):
    values, indices, positions = brute_force(model, x, tapped, tp.k, batch_size)
    rows = slice(None) if units is None else units
    np.testing.assert_array_equal(tp.indices[layer], indices[rows])
    np.testing.assert_array_equal(tp.positions[layer], positions[rows])
    np.testing.assert_array_equal(tp.values[layer], values[rows].astype(np.float32))


def test_equals_brute_force_with_ties_residual_and_fc(tiny_resnet):
    model = dead_unit_resnet(tiny_resnet)
    x = tie_data()
    layers = ["layer1", "layer2.conv1", "layer3", "fc"]
    tp = top_patches(model, x, layers, k=4, batch_size=5, progress=False)
    for name in layers:
        assert_equals_brute(tp, model, x, name, name, 5)
        assert tp.values[name].dtype == np.float32 and tp.indices[name].dtype == np.int64
    assert np.all(tp.values["layer1"][0] == 0)  # the dead unit: every image ties at 0, at position (0, 0)
    np.testing.assert_array_equal(tp.indices["layer1"][0], [0, 1, 2, 3])
    np.testing.assert_array_equal(tp.positions["layer1"][0], np.zeros((4, 2)))
    dup = tp.indices["layer3"]  # a duplicated image ties with its first copy, which ranks first
    for u in range(dup.shape[0]):
        for a, b in ((2, 7), (3, 8), (0, 20), (1, 21), (2, 22)):
            if a in dup[u] and b in dup[u]:
                assert list(dup[u]).index(a) < list(dup[u]).index(b)
    np.testing.assert_array_equal(tp.positions["fc"], np.zeros((10, 4, 2)))
    assert tp.map_hw == {"layer1": (16, 16), "layer2.conv1": (8, 8), "layer3": (4, 4), "fc": (1, 1)}
    np.testing.assert_array_equal(tp.boxes["fc"], np.tile([0, 0, 16, 16], (10, 4, 1)))  # fc: the whole image


def test_one_batch_more_than_n_and_units(tiny_resnet):
    x = tie_data(n=12)
    tp = top_patches(tiny_resnet, x, "layer2", k=15, units=[5, 0, 3], batch_size=64, progress=False)
    assert_equals_brute(tp, tiny_resnet, x, "layer2", "layer2", 64, units=[5, 0, 3])
    np.testing.assert_array_equal(tp.units["layer2"], [5, 0, 3])
    assert (tp.indices["layer2"][:, 12:] == -1).all() and np.isnan(tp.values["layer2"][:, 12:]).all()
    assert (tp.boxes["layer2"][:, 12:] == 0).all() and (tp.positions["layer2"][:, 12:] == -1).all()
    assert tp.top("layer2", 0)[0]["image"] == tp.indices["layer2"][1, 0] and len(tp.top("layer2", 3)) == 12


def test_gray_non_square_one_pass_equals_separate_passes(gray_net):
    x = torch.rand(17, 1, 20, 28, generator=torch.Generator().manual_seed(5))
    layers = ["conv1", "conv2", "pool2"]
    together = top_patches(gray_net, x, layers, k=3, batch_size=4, progress=False)
    for name in layers:
        alone = top_patches(gray_net, x, name, k=3, batch_size=4, progress=False)
        for key in ("values", "indices", "positions", "boxes"):
            np.testing.assert_array_equal(getattr(alone, key)[name], getattr(together, key)[name])
        assert_equals_brute(together, gray_net, x, name, name, 4)
    assert together.image_hw == (20, 28) and together.map_hw["conv2"] == (4, 6)


def test_boxes_equal_the_gradient_probe_and_crops_have_the_box_size(gray_net, tiny_resnet):
    x = torch.rand(11, 1, 20, 28, generator=torch.Generator().manual_seed(6))
    tp = top_patches(gray_net, x, ["conv2", "pool2"], k=3, batch_size=4, progress=False)
    for name in ("conv2", "pool2"):
        assert tp.box_method[name] == "analytic"
        for u in (0, 5):
            for (r, c), box in zip(tp.positions[name][u], tp.boxes[name][u]):
                b = receptive_field(gray_net, name, (int(r), int(c)), (1, 20, 28), method="probe")
                assert tuple(box) == (b.top, b.left, b.bottom, b.right)
    crops = tp.crops("conv2", 2, x)
    assert len(crops) == 3
    for crop, (t, l, b, r), i in zip(crops, tp.boxes["conv2"][2], tp.indices["conv2"][2]):
        assert crop.shape == (1, b - t, r - l)
        torch.testing.assert_close(crop, x[i, :, t:b, l:r])
    padded = tp.crops("conv2", 2, x, pad=True)
    assert all(p.shape == (1, *tp.fields["conv2"]["rf"]) for p in padded)
    y = tie_data(n=12)
    res = top_patches(tiny_resnet, y, "layer3", k=2, batch_size=4, progress=False)
    for (r, c), box in zip(res.positions["layer3"][7], res.boxes["layer3"][7]):
        b = receptive_field(tiny_resnet, "layer3", (int(r), int(c)), (3, 16, 16), method="probe")
        assert tuple(box) == (b.top, b.left, b.bottom, b.right)


class Upsampled(nn.Module):
    """Geometry the summary cannot follow (interpolate): boxes come from the probe."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.interpolate(F.relu(self.conv1(x)), scale_factor=2.0))


def test_unknown_geometry_falls_back_to_the_probe():
    torch.manual_seed(0)
    model = Upsampled().eval()
    x = torch.rand(6, 3, 13, 13)
    tp = top_patches(model, x, "conv2", k=2, progress=False)
    assert tp.box_method["conv2"] == "probe" and tp.fields["conv2"] is None
    assert_equals_brute(tp, model, x, "conv2", "conv2", 128)
    for (r, c), box in zip(tp.positions["conv2"][1], tp.boxes["conv2"][1]):
        b = receptive_field(model, "conv2", (int(r), int(c)), (3, 13, 13), method="probe")
        assert tuple(box) == (b.top, b.left, b.bottom, b.right)
    assert all(c.shape[1:] == (b - t, r - l) for c, (t, l, b, r) in zip(tp.crops("conv2", 1, x, pad=True),
                                                                           tp.boxes["conv2"][1]))


def test_run_default_layers_read_after_relu_and_boxes_through_normalization(small_run):
    tp = top_patches(small_run, progress=False, batch_size=64)
    assert tp.layers == ["conv1", "conv2", "conv3"] and tp.n_images == 200
    assert tp.paths["conv1"].endswith("relu1") and tp.box_method["conv1"] == "analytic"
    assert (tp.values["conv1"][np.isfinite(tp.values["conv1"])] >= 0).all()  # rectified maps
    pm = small_run.pixel_model()
    for (r, c), box in zip(tp.positions["conv2"][3], tp.boxes["conv2"][3]):
        b = receptive_field(pm, tp.paths["conv2"], (int(r), int(c)), (1, 16, 16), method="probe")
        assert tuple(box) == (b.top, b.left, b.bottom, b.right)
    from convlens.training.evaluate import run_test_data

    data = run_test_data(small_run)
    assert_equals_brute(tp, pm, data.images, "conv2", tp.paths["conv2"], 64)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(tiny_resnet, tmp_path):
    x = tie_data(n=29)
    layers = ["layer1", "layer3", "fc"]
    whole = top_patches(tiny_resnet, x, layers, k=5, batch_size=6, progress=False)
    seen, budget = [], [2]

    def flaky(batch):
        if budget[0] == 0:
            raise Interrupt
        budget[0] -= 1
        seen.append(len(batch))
        return batch

    with pytest.raises(Interrupt):
        top_patches(tiny_resnet, x, layers, k=5, batch_size=6, progress=False, out=tmp_path, preprocess=flaky)
    assert hooks_left(tiny_resnet) == 0
    prog = json.loads((tmp_path / "shard-00000-of-00001" / "progress.json").read_text())
    assert prog == {"rows": 29, "rows_done": 12}
    seen.clear()
    budget[0] = 100
    resumed = top_patches(tiny_resnet, x, layers, k=5, batch_size=6, progress=False, out=tmp_path, preprocess=flaky)
    assert seen == [6, 6, 5]  # only rows 12..28 computed again
    for name in layers:
        for key in ("exact_values", "indices", "positions", "boxes"):
            np.testing.assert_array_equal(getattr(resumed, key)[name], getattr(whole, key)[name])
    seen.clear()
    top_patches(tiny_resnet, x, layers, k=5, batch_size=6, progress=False, out=tmp_path, preprocess=flaky)
    assert seen == []  # complete: nothing recomputed
    with pytest.raises(InputError, match="other arguments"):
        top_patches(tiny_resnet, x, layers, k=4, batch_size=6, progress=False, out=tmp_path, preprocess=flaky)


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_shards_merged_equal_one_process(tiny_resnet, world_size):
    x = tie_data(n=23)
    whole = top_patches(tiny_resnet, x, ["layer2", "fc"], k=4, batch_size=4, progress=False)
    parts = [top_patches(tiny_resnet, x, ["layer2", "fc"], k=4, batch_size=4, progress=False, rank=r,
                         world_size=world_size) for r in reversed(range(world_size))]
    assert sum(p.rows_mined for p in parts) == 23
    merged = TopPatches.merge(parts)
    for name in whole.layers:
        for key in ("values", "exact_values", "indices", "positions", "boxes", "units"):
            np.testing.assert_array_equal(getattr(merged, key)[name], getattr(whole, key)[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_order_equals_a_stable_sort_with_ties_signed_zeros_and_infinities(dtype):
    from convlens.units._topk import _top_order

    g = torch.Generator().manual_seed(0)
    pool = torch.tensor([0.0, -0.0, 1.5, -1.5, 2.0, -3e-38, 1e-45, -1e-45, float("inf"), -float("inf"), 7.0])
    v = pool[torch.randint(0, len(pool), (40, 30), generator=g)].to(dtype)  # many ties
    for k in (1, 9, 30, 45):
        got = _top_order(v, k)
        for row, order in zip(v.tolist(), got.tolist()):
            assert order == sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]  # -0.0 == 0.0: a tie


def test_float64_model_ties_in_float32_merge_exactly():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    x = torch.full((6, 1, 2, 2), 1.0, dtype=torch.float64)
    x[:, 0, 0, 0] += torch.tensor([0.0, 1e-12, 2e-12, 0.0, 3e-12, 1e-12], dtype=torch.float64)  # equal in float32
    whole = top_patches(model, x, "0", k=3, batch_size=2, progress=False)
    np.testing.assert_array_equal(whole.indices["0"][0], [4, 2, 1])
    parts = [top_patches(model, x, "0", k=3, batch_size=2, progress=False, rank=r, world_size=3) for r in range(3)]
    np.testing.assert_array_equal(TopPatches.merge(parts).indices["0"], whole.indices["0"])


def test_model_left_as_found_also_on_error(tiny_resnet):
    model = tiny_resnet.train()
    model.layer1.conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    top_patches(model, tie_data(n=12), ["layer1", "layer3"], k=2, batch_size=3, progress=False)
    with pytest.raises(InputError, match="units must be"):
        top_patches(model, tie_data(n=12), ["layer1", "layer3"], units=[3, 15], progress=False)  # layer1 has 8
    assert all(m.training for m in model.modules()) and hooks_left(model) == 0
    assert not model.layer1.conv1.weight.requires_grad and model.layer2.conv1.weight.requires_grad
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_clear_errors(tiny_resnet, twice_net):
    x = tie_data(n=12)
    with pytest.raises(LayerNotFoundError, match="layer9"):
        top_patches(tiny_resnet, x, "layer9")
    for kwargs, what in (({"k": 0}, "k must be"), ({"units": [-1]}, "units must be"), ({"units": "a"}, "units must be"),
                         ({"batch_size": 0}, "batch_size must be"), ({"rank": 2, "world_size": 2}, "rank must be")):
        with pytest.raises(InputError, match=what):
            top_patches(tiny_resnet, x, "layer1", progress=False, **kwargs)
    with pytest.raises(InputError, match="data must be"):
        top_patches(tiny_resnet, None, "layer1")
    with pytest.raises(InputError, match="runs again"):
        top_patches(twice_net, torch.rand(3, 3, 12, 12), ["shared", "head"], progress=False)
    alone = top_patches(twice_net, torch.rand(3, 3, 12, 12), "shared", k=2, progress=False)  # stops at its 1st call
    assert alone.indices["shared"].shape == (4, 2)
    nan = x.clone()
    nan[4, 0, 3, 3] = float("nan")
    with pytest.raises(DataError, match="finite"):
        top_patches(tiny_resnet, nan, "layer1", k=2, batch_size=3, progress=False)
    tp = top_patches(tiny_resnet, x, "layer1", k=2, progress=False)
    with pytest.raises(InputError, match="unit must be"):
        tp.crops("layer1", 8, x)
    with pytest.raises(DataError, match="mined on"):
        tp.crops("layer1", 0, x[:4])
    with pytest.raises(InputError, match="layer must be"):
        tp.row("layer3", 0)
    assert hooks_left(tiny_resnet) == 0 and hooks_left(twice_net) == 0


def test_save_load_roundtrip_and_plots(tiny_resnet, tmp_path):
    x = tie_data(n=12)
    ds = ImageDataset(x, torch.arange(12) % 3, ["a", "b", "c"], name="ties")
    tp = top_patches(tiny_resnet, ds, ["layer1", "fc"], k=4, batch_size=5, progress=False)
    tp.save(tmp_path / "tp.json")
    back = TopPatches.load(tmp_path / "tp.json")
    for name in tp.layers:
        for key in ("values", "exact_values", "indices", "positions", "boxes", "units"):
            np.testing.assert_array_equal(getattr(back, key)[name], getattr(tp, key)[name])
    assert back.to_dict() == tp.to_dict() and "layer1" in repr(back)
    json.dumps(tp.to_dict(arrays=True))
    from convlens.plots.common import to_png

    assert to_png(back.plot(["layer1", "fc"], ds, units=[0, 1])).startswith(b"\x89PNG")
    assert to_png(back.plot_regions("layer1", 2, ds)).startswith(b"\x89PNG")


def test_cli_saves_results_and_the_report_section_reads_them(small_run, tmp_path, capsys):
    import convlens
    from convlens.cli.app import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.patches import patches

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["top-patches", str(run_dir), "--layer", "conv1", "--layer", "conv2,conv3", "--k", "4", "--quiet"])
    assert "conv2" in capsys.readouterr().out
    [saved] = (run_dir / "results").glob("top-patches@*.json")  # options given: kept beside the default result
    assert saved.with_suffix(".npz").is_file()
    sec = patches(ReportContext(convlens.load_run(run_dir), run_dir / "report"))
    figures = [b for b in sec.blocks if getattr(b, "kind", "") == "figure"]
    assert [f.name for f in figures] == ["top9", "top-regions"] and all(f.png.startswith(b"\x89PNG") for f in figures)
    with pytest.raises(SystemExit) as err:
        main(["top-patches", str(run_dir), "--units", "x"])
    assert err.value.code == 2
    from convlens.cli.patches_cmds import demo_patches

    demo_patches(run_dir)  # every conv layer, k=9, where the report looks
    assert TopPatches.load(run_dir / "results" / "top-patches.json").layers == ["conv1", "conv2", "conv3"]


def _dist_worker(rank, world_size, init, out, q):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        from conftest import FIXTURE_MODELS

        model = FIXTURE_MODELS["tiny_resnet"]().eval()
        tp = top_patches(model, tie_data(n=13), ["layer2", "fc"], k=3, batch_size=4, progress=False, rank=rank,
                         world_size=world_size, out=out)
        q.put((rank, tp.indices["layer2"].copy(), tp.exact_values["fc"].copy(), tp.boxes["layer2"].copy()))
        torch.distributed.barrier()  # both done before either tears down (one leaving first aborts gloo)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes(tmp_path):
    from conftest import FIXTURE_MODELS

    got = run_gloo_workers(_dist_worker, tmp_path)
    whole = top_patches(FIXTURE_MODELS["tiny_resnet"]().eval(), tie_data(n=13), ["layer2", "fc"], k=3, batch_size=4,
                        progress=False)
    for _, layer2, fc, boxes in got:  # every rank returns the whole
        np.testing.assert_array_equal(layer2, whole.indices["layer2"])
        np.testing.assert_array_equal(fc, whole.exact_values["fc"])
        np.testing.assert_array_equal(boxes, whole.boxes["layer2"])


def test_padding_stops_at_the_image_where_the_field_is_larger():
    """A field larger than the image along an axis: the padded crop is the image's extent there, the crop at
    its place in the image (the image itself shows through); along the other axis, the full field."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, (7, 3), padding=(3, 1)), nn.ReLU(),
                          nn.Conv2d(3, 4, (7, 3), padding=(3, 1)), nn.ReLU()).eval()  # rf 13 x 5
    x = torch.rand(6, 1, 10, 12)                                          # 10 rows < 13: rows capped
    tp = top_patches(model, x, "3", k=3, progress=False)
    assert tuple(tp.fields["3"]["rf"]) == (13, 5)
    for unit in range(4):
        plain, padded = tp.crops("3", unit, x), tp.crops("3", unit, x, pad=True, fill=float("nan"))
        r = tp.row("3", unit)
        for crop, canvas, box, i in zip(plain, padded, tp.boxes["3"][r], tp.indices["3"][r]):
            t, lf, b, rt = (int(v) for v in box)
            assert canvas.shape[1:] == (10, 5)
            rows = canvas[0, :, ~torch.isnan(canvas[0]).all(0)]            # the columns the crop fills
            assert torch.equal(rows[t:b], x[i, 0, t:b, lf:rt])             # rows at their place in the image
            assert torch.isnan(canvas[0, :t]).all() and torch.isnan(canvas[0, b:]).all()
