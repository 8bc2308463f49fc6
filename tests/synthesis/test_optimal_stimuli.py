"""Activation maximization from several starts under a fixed norm (Erhan et al. 2009): the optima of a unit
built to have two (a hand-made max of two linear filters, whose optima on the sphere are known in closed
form), the sphere and the activations recomputed by plain forward passes, bad input, saved results, the
`convlens invariances` command and the report section."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens.errors import InputError, LayerNotFoundError
from convlens.synthesis.optimal_stimuli import OptimalStimuli, cluster, optimal_stimuli
from conftest import assert_as_found, model_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory):
    """A run directory of a small grammar net (random weights, 1x16x16, 10 classes, normalization 0.5 / 0.25)."""
    return convlens.wrap("CONV3-8,RELU,POOL2,CONV3-16,RELU,GAP,FC-10", tmp_path_factory.mktemp("spec") / "run",
                         input_shape=(1, 16, 16), class_names=10, mean=[0.5], std=[0.25])


class TwoFilters(nn.Module):
    """max(w1 . x, w2 . x) on 1x8x8: on the sphere ||x|| = r its two local maxima are r w_i / ||w_i||, of
    activation r ||w_i|| (w1, w2 at an angle: each is a maximum of its own half-space)."""

    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.filters = nn.Linear(64, 2, bias=False)
        self.filters.weight.data = torch.randn(2, 64, generator=g)
        self.unit = nn.Identity()

    def forward(self, x):                                          # (N, 1, 8, 8)
        return self.unit(self.filters(x.flatten(1)).amax(1, keepdim=True))  # (N, 1)


def test_a_unit_with_two_optima_gives_two_clusters_at_the_closed_form_optima():
    model = TwoFilters().eval()
    res = optimal_stimuli(model, "unit", 0, n_inits=8, norm=2.0, steps=100)
    w = model.filters.weight.detach().double()                     # (2, 64)
    assert res.n_clusters == 2 and sorted(np.bincount(res.clusters)) == [4, 4]
    x = res.images.reshape(8, -1).double()
    torch.testing.assert_close(x.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64), rtol=1e-6, atol=0)
    for c in range(2):
        members = x[torch.from_numpy(res.clusters == c)]
        cos = (members / members.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T  # (m, 2)
        i = int(cos.mean(0).argmax())                              # the filter this cluster found
        assert cos[:, i].min() > 0.9999
        np.testing.assert_allclose(res.activation[res.clusters == c], 2.0 * float(w[i].norm()), rtol=1e-5)
    with torch.no_grad():                                          # the recorded activations: plain forwards
        np.testing.assert_allclose(res.activation, model(res.images)[:, 0].numpy(), rtol=1e-6)
    expected = (x @ x.T / 4.0).numpy()
    np.testing.assert_allclose(res.cosine, expected, atol=1e-6)
    order = res.order
    assert list(res.clusters[order]) == sorted(res.clusters) and not res.missed


def test_cluster_cuts_the_average_linkage_tree_at_the_cosine_given():
    cos = np.array([[1, .95, .2, .1], [.95, 1, .15, .1], [.2, .15, 1, .92], [.1, .1, .92, 1]])
    assert cluster(cos, 0.9).tolist() == [0, 0, 1, 1]
    assert cluster(cos, 0.93).tolist() == [0, 0, 1, 2]
    assert cluster(cos, 0.0).tolist() == [0, 0, 0, 0]


def test_a_class_score_on_a_run_and_the_model_left_as_found(spec_run):
    model = spec_run.pixel_model()
    model.train()
    before = model_state(model)
    res = optimal_stimuli(spec_run, target=3, n_inits=2, steps=20)
    assert res.info["kind"] == "class" and res.info["label"] == "class 3"
    mean = spec_run.mean.reshape(1, -1, 1, 1)
    expected_norm = 16 * 0.25                                      # sqrt(H W std^2), one channel
    torch.testing.assert_close((res.images - mean).flatten(1).norm(dim=1), torch.full((2,), expected_norm),
                               rtol=1e-5, atol=0)
    with torch.no_grad():
        scores = model.eval()(res.images)[:, 3]
    model.train()
    np.testing.assert_allclose(res.activation, scores.numpy(), rtol=1e-5)
    assert (res.activation > res.start_activation).all()
    assert_as_found(model, before)


def test_clear_errors(tiny_resnet):
    with pytest.raises(LayerNotFoundError, match="Did you mean 'layer2'"):
        optimal_stimuli(tiny_resnet, "layer22", 0)
    with pytest.raises(InputError, match="unit must be in"):
        optimal_stimuli(tiny_resnet, "stem", 8, n_inits=2, steps=1)
    with pytest.raises(InputError, match="n_inits must be an int >= 2"):
        optimal_stimuli(tiny_resnet, "stem", 0, n_inits=1)
    for bad in (0.0, -3.0, float("nan")):
        with pytest.raises(InputError, match="norm must be a positive number"):
            optimal_stimuli(tiny_resnet, "stem", 0, norm=bad)
    with pytest.raises(InputError, match="unit must be given"):
        optimal_stimuli(tiny_resnet, "stem")
    with pytest.raises(InputError, match="give layer \\+ unit"):
        optimal_stimuli(tiny_resnet)
    with pytest.raises(InputError, match=r"target must be a class index in \[0, 9\]"):
        optimal_stimuli(tiny_resnet, target=10)

    class NoPath(TwoFilters):
        def forward(self, x):
            with torch.no_grad():
                h = self.filters(x.flatten(1))
            return self.unit(h.amax(1, keepdim=True))
    with pytest.raises(InputError, match="no differentiable path"):
        optimal_stimuli(NoPath().eval(), "unit", 0, n_inits=2)


def test_save_load_and_plot(tmp_path):
    assert convlens.optimal_stimuli is optimal_stimuli and convlens.OptimalStimuli is OptimalStimuli
    res = optimal_stimuli(TwoFilters().eval(), "unit", 0, n_inits=3, norm=1.0, steps=5)
    res.save(tmp_path / "os")
    back = OptimalStimuli.load(tmp_path / "os.json")
    assert torch.equal(back.images, res.images) and back.info == res.info
    for name in ("activation", "start_activation", "cosine", "clusters", "tangential_gradient", "history"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.display().shape == (3, 8, 8, 1) and len(back.plot().axes) >= 4


def test_cli_saves_both_results_and_the_report_section_reads_them(spec_run, tmp_path, capsys):
    from convlens.cli.app import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.optimal_stimuli import optimal_stimuli as section

    run_dir = tmp_path / "run"
    shutil.copytree(spec_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["invariances", str(run_dir), "--layer", "conv2", "--unit", "1", "--inits", "2", "--steps", "5", "--k", "2",
          "--quiet"])
    out = capsys.readouterr().out
    assert "optimal stimuli (Erhan et al. 2009) of conv2:1" in out and "least invariant" in out
    for name in ("optimal-stimuli", "hessian-invariances"):       # options given: kept beside the defaults
        [saved] = (run_dir / "results").glob(f"{name}@*.json")
        assert all(saved.with_suffix(ext).is_file() for ext in (".npz", ".png"))
    sec = section(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))
    assert [b.kind for b in sec.blocks] == ["metrics", "figure", "table", "text"] * 2
    assert sec.blocks[4].items["analysed"] == "softplus β = 10"
    for args in (["--inits", "1"], ["--beta", "-1"], ["--class", "3", "--unit", "0"], ["--layer", "conv9"]):
        with pytest.raises(SystemExit) as exit_:
            main(["invariances", str(run_dir), "--steps", "1", "--quiet", *args])
        assert exit_.value.code == 2
