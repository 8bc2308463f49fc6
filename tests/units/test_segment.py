"""Saliency-seeded GrabCut segmentation (Simonyan et al. 2014, Sec. 3.1), its result object, CLI
and report section. Oracle: a synthetic "model" whose class score is the sum of the pixels inside a
known region, so its saliency map is exactly that region."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens import InputError
from convlens.cli.app import main
from convlens.units.backprop import saliency
from convlens.units.segment import BackpropResult, explain, grabcut_from_saliency, iou, segment


class RegionScore(nn.Module):
    """Class 0 scores the sum of the pixels inside ``region`` (H, W); class 1 its negative."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):                                       # (N, C, H, W)
        s = (x * self.region).sum((1, 2, 3)) * self.scale        # (N,)
        return torch.stack([s, -s], 1)                           # (N, 2)


def _scene(channels: int = 3, h: int = 40, w: int = 56, seed: int = 0):
    """An image with a differently coloured, noisy blob on a noisy background, and the blob's mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    region = ((yy - 18) / 9.0) ** 2 + ((xx - 30) / 14.0) ** 2 <= 1.0  # an ellipse
    bg = np.array([0.2, 0.5, 0.3])[:channels, None, None]
    fg = np.array([0.8, 0.2, 0.6])[:channels, None, None] if channels == 3 else np.array([0.85])[:, None, None]
    img = np.where(region[None], fg, bg) + rng.normal(0, 0.05, (channels, h, w))
    return torch.from_numpy(np.clip(img, 0, 1)).float(), torch.from_numpy(region)


@pytest.mark.parametrize("channels", [3, 1])
def test_grabcut_recovers_the_region_a_synthetic_model_looks_at(channels):
    img, region = _scene(channels)
    model = RegionScore(region)
    sal = saliency(model, img[None], 0)
    torch.testing.assert_close(sal[0], region.float())  # the oracle: saliency is exactly the region
    mask = segment(model, img[None], 0)
    assert mask.dtype == torch.bool and mask.shape == (1, 40, 56)
    assert iou(mask, region[None])[0] > 0.9


def test_seeds_only_estimate_the_colour_models():
    """A salient speck of background does not stay foreground: seeds are not hard constraints, and
    the largest connected component is kept."""
    img, region = _scene()
    sal = region.double().numpy() + 0.01 * np.random.default_rng(1).random(region.shape)
    sal[2:5, 2:5] = 2.0  # a few very salient background pixels
    mask = grabcut_from_saliency(img, sal)
    assert not mask[2:5, 2:5].any()
    assert iou(mask, region.numpy()) > 0.9


def test_flat_saliency_gives_an_empty_mask_and_tiny_images_raise():
    img, _ = _scene()
    assert not grabcut_from_saliency(img, np.zeros((40, 56))).any()
    with pytest.raises(InputError, match="too small to seed GrabCut"):
        grabcut_from_saliency(torch.rand(3, 6, 6), np.random.default_rng(0).random((6, 6)))


def test_iou_by_hand():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2, :2] = True                  # 4 px
    b[0, 1:3, 1:3] = True                # 4 px, 1 in common -> 1 / 7
    np.testing.assert_allclose(iou(a, b), [1 / 7, 1.0])  # two empty masks agree


def test_option_errors():
    img, region = _scene()
    model = RegionScore(region)
    with pytest.raises(InputError, match="fg_quantile must be a quantile"):
        segment(model, img[None], 0, fg_quantile=1.5)
    with pytest.raises(InputError, match="bg_quantile must be below fg_quantile"):
        segment(model, img[None], 0, fg_quantile=0.3, bg_quantile=0.5)
    with pytest.raises(InputError, match="iterations must be a positive int"):
        segment(model, img[None], 0, iterations=0)
    assert convlens.segment is segment


def test_result_round_trip_and_figures(tmp_path):
    img, region = _scene()
    model = RegionScore(region)
    res = explain(model, img[None].repeat(2, 1, 1, 1), [0, 0], true_masks=region[None].repeat(2, 1, 1),
                  labels=[0, 0], indices=[4, 9], data="scene")
    assert res.iou.shape == (2,) and res.iou.min() > 0.9
    back = BackpropResult.load(res.save(tmp_path / "saliency.json"))
    for key in ("images", "saliency", "deconvnet", "guided", "masks", "true_masks"):
        np.testing.assert_array_equal(getattr(back, key), getattr(res, key))
    assert back.to_dict() == res.to_dict() and back.indices == (4, 9)
    for method in ("saliency", "deconvnet", "guided", "projections"):
        assert res.plot(method).axes
    assert res._repr_png_()[:4] == b"\x89PNG"


# ---- CLI and report ----------------------------------------------------------------------------------------

def test_cli_saves_results_a_figure_and_a_report_section(small_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["saliency", str(run_dir), "--index", "0", "--index", "5", "--method", "guided", "--target", "3"])
    out = capsys.readouterr().out
    [first] = (run_dir / "results").glob("saliency@*.json")  # options given: kept beside the default result
    assert "target 3" in out and first.with_name(f"{first.stem}-guided.png").is_file()
    res = BackpropResult.load(first)
    assert res.indices == (0, 5) and res.targets.tolist() == [3, 3] and res.true_masks is None

    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((30, 20)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    main(["saliency", str(run_dir), str(tmp_path / "x.png"), "--out", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").is_file()
    [second] = set((run_dir / "results").glob("saliency@*.json")) - {first}
    assert BackpropResult.load(second).images.shape == (1, 1, 16, 16)

    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.saliency import saliency as section

    sec = section(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))
    assert sec is not None and [b.kind for b in sec.blocks][:3] == ["metrics", "figure", "figure"]
    assert "deconv-top9" not in [getattr(b, "name", "") for b in sec.blocks]

    from convlens.units.patches import top_patches  # with saved top patches: Zeiler & Fergus Fig. 2 too

    top_patches(convlens.load_run(run_dir), k=9, progress=False).save(run_dir / "results" / "top-patches.json")
    sec = section(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))
    assert "deconv-top9" in [getattr(b, "name", "") for b in sec.blocks]
    with pytest.raises(SystemExit) as e:
        main(["saliency", str(run_dir), "--method", "lrp"])
    assert e.value.code == 2


def test_demo_shapes_iou(demo_run_dir):
    """On the demo model, GrabCut from saliency alone finds the shapes' true masks."""
    from convlens.cli.backprop_cmds import demo_saliency

    demo_saliency(demo_run_dir)
    res = BackpropResult.load(demo_run_dir / "results" / "saliency.json")
    assert len(res.images) == 8 and res.iou.mean() > 0.85
    assert (res.targets == res.predicted).all() and (res.targets == res.labels).all()
