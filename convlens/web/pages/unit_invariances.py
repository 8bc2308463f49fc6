"""A unit's optimal stimuli from several random starts (Erhan et al. 2009: ``convlens.optimal_stimuli``) and the
Hessian invariances of the best one (Berkes & Wiskott 2006; Le et al. 2010: ``convlens.hessian_invariances``), on
the unit's page: computed on request (``POST api/layers/{layer}/units/{unit}/invariances``, the page's button) as
``convlens invariances RUN --layer L --unit U --inits 4 --steps 100 --k 4`` would, and saved under its two
result names and options (``optimal-stimuli``, ``hessian-invariances``), so the CLI and the explorer share them.

The job's cost is bounded below the command's defaults (8 starts, 200 steps, k = 8): 4 starts of 100 steps and
the 4 most invariant directions (with the command's 2 least invariant ones, one random direction, 50 refining
steps and the softplus copy of β = 10): about half a minute to a minute on 2 CPU cores for the demo net. A
result the command saved with its own defaults for this unit (``--layer L --unit U``), or the default result
(``convlens invariances RUN``: unit 0 of the last conv layer) where it is this unit, is shown instead.
Figures as PNGs (``png/layers/{layer}/units/{unit}/invariances/{stimuli|invariances}``), drawn by the results'
own ``plot``.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import NotFound, not_found
from ..memo import file_stats, version
from ..png import figure_png, response
from ..responses import started
from . import raw
from .conv_units import check_layer, check_unit, png_url, quoted

STIMULI, INVARIANCES = "optimal-stimuli", "hessian-invariances"  # `convlens invariances`'s result names
BOUNDED = {"n_inits": 4, "steps": 100}  # the job's starts and steps (the command's --inits, --steps)
K = 4                                   # the job's invariances (the command's --k)
BETA, SEED = 10.0, 0                    # the command's defaults (--beta, --seed): left out of its options
FIGURES = ("stimuli", "invariances")
FIGURES_KEPT = 8


def _options(layer: str, unit: int, bounded: bool = True) -> tuple[dict, dict]:
    """(optimal-stimuli's options, hessian-invariances') as ``convlens invariances RUN --layer L --unit U`` records
    them: with the explorer's bounded cost, or (``bounded=False``) the command's defaults."""
    stimuli = {"layer": layer, "unit": unit, **(BOUNDED if bounded else {})}
    return stimuli, {**stimuli, **({"k": K} if bounded else {})}


def command(ex, layer: str, unit: int) -> str:
    """The command that computes (and saves) what the job does."""
    return (f"convlens invariances {ex.name} --layer {layer} --unit {unit} --inits {BOUNDED['n_inits']} "
            f"--steps {BOUNDED['steps']} --k {K}")


def _is_unit(result, layer: str, unit: int) -> bool:
    info = result.info
    return info.get("kind") == "unit" and info.get("layer") == layer and info.get("unit") == unit \
        and info.get("position") is None


def found(ex, layer: str, unit: int):
    """(OptimalStimuli, its version, HessianInvariances, its version, their options) of this unit, or None: the
    explorer's (bounded) result, the command's with its defaults, or the default result where it is this unit."""
    tries = [_options(layer, unit), _options(layer, unit, bounded=False), ({}, {})]
    for stimuli_options, options in tries:
        inv, inv_version = ex.saved(INVARIANCES, options, exact=True)
        if inv is None or not _is_unit(inv, layer, unit):
            continue
        stimuli, stimuli_version = ex.saved(STIMULI, stimuli_options, exact=True)
        if stimuli is None or not _is_unit(stimuli, layer, unit):
            continue
        return stimuli, stimuli_version, inv, inv_version, options
    return None


def _numbers(stimuli, inv) -> dict:
    """The key numbers of both results, as ``convlens invariances`` prints them."""
    si, info = stimuli.info, inv.info
    off = stimuli.cosine[~np.eye(len(stimuli), dtype=bool)]
    mid = len(inv.angles) // 2
    sm = info["smooth"]
    return {
        "label": si["label"], "norm": si["norm"], "steps": si["steps"], "n_inits": len(stimuli),
        "clusters": stimuli.n_clusters, "cluster_sizes": np.bincount(stimuli.clusters).tolist(),
        "same": si["same"], "cosine": [float(off.min()), float(off.max())] if off.size else None,
        "starts": [{"seed": si["seeds"][j], "cluster": int(stimuli.clusters[j]),
                    "start": float(stimuli.start_activation[j]), "activation": float(stimuli.activation[j]),
                    "tangential_gradient": float(stimuli.tangential_gradient[j]), "best": int(j) == stimuli.best}
                   for j in stimuli.order],
        "stimuli_missed": stimuli.missed,
        "k": info["k"], "activation": info["activation"], "max_angle_degrees": math.degrees(info["max_angle"]),
        "smooth": {"used": sm["used"], "beta": sm["beta"], "replaced": sm["replaced"], "activation": sm["activation"],
                   "gap": sm["activation_gap"]},
        "directions": [{"kind": inv.kinds[i], "eigenvalue": None if not np.isfinite(inv.eigenvalues[i])
                        else float(inv.eigenvalues[i]), "slope": float(inv.slope[i]),
                        "activation": [float(inv.activation[i, 0]), float(inv.activation[i, mid]),
                                       float(inv.activation[i, -1])]} for i in range(len(inv))],
        "hvps": info["hvps"], "eigen_seconds": info["eigen_seconds"], "seconds": info.get("seconds"),
        "tangential_gradient": info["tangential_gradient"], "degenerate": info["degenerate"],
        "invariances_missed": inv.missed}


def invariances_section(ex, layer: str, unit: int) -> dict:
    """The unit page's optimal stimuli and invariances: saved (``state`` done, with the numbers and figures),
    being computed (job), or not started (none: the page offers the button)."""
    out = {"state": "none", "job": None, "start": f"api/layers/{quoted(layer)}/units/{unit}/invariances",
           "command": command(ex, layer, unit), "cost": {**BOUNDED, "k": K, "beta": BETA}}
    hit = found(ex, layer, unit)
    if hit is None:
        job = ex.job(INVARIANCES, _options(layer, unit)[1])
        if job is not None:
            out.update(state="job", job=job.to_dict())
        out["results"] = [ex.store.path(name, options).name for name, options in
                          zip((STIMULI, INVARIANCES), _options(layer, unit))]
        return out
    stimuli, sv, inv, iv, options = hit
    stimuli_options = {k: v for k, v in options.items() if k not in ("k", "beta")}
    out.update(state="done", options=options, numbers=_numbers(stimuli, inv),
               results=[ex.store.path(STIMULI, stimuli_options).name, ex.store.path(INVARIANCES, options).name],
               figures={"stimuli": png_url(layer, f"units/{unit}/invariances/stimuli", sv),
                        "invariances": png_url(layer, f"units/{unit}/invariances/invariances", iv)})
    return out


@raw("/png/layers/{layer}/units/{unit}/invariances/{figure}")
def invariances_png(ex, request):
    """``stimuli``: the optima by cluster with their activations and cosine matrix; ``invariances``: Berkes &
    Wiskott's rows, x* moved along each direction, the activation under each image."""
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    figure = request.path_params["figure"]
    if figure not in FIGURES:
        raise not_found("figure", figure, FIGURES)
    hit = found(ex, layer, unit)
    if hit is None:
        raise NotFound(f"no optimal stimuli of {layer} unit {unit} yet (its page has the button)")
    stimuli, sv, inv, iv, _ = hit
    result, v = (stimuli, sv) if figure == "stimuli" else (inv, iv)
    cache = ex.memo.lru("invariance figures", FIGURES_KEPT)
    data = cache.get_or_make((layer, unit, figure, v), lambda: figure_png(result.plot))
    return response(data)


@raw("/api/layers/{layer}/units/{unit}/invariances", methods=("POST",))
def start_invariances(ex, request):
    """Start ``convlens invariances RUN --layer L --unit U --inits 4 --steps 100 --k 4`` as a job."""
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    job = None
    if found(ex, layer, unit) is None:
        stimuli_options, options = _options(layer, unit)

        def compute(progress):
            from ...synthesis.invariances import hessian_invariances
            from ...synthesis.optimal_stimuli import optimal_stimuli

            stimuli = ex.result(STIMULI, stimuli_options, exact=True)  # saved by a job whose Hessian failed
            if stimuli is None or not _is_unit(stimuli, layer, unit):
                progress(0.02, f"{BOUNDED['n_inits']} starts of {BOUNDED['steps']} steps")
                stimuli = optimal_stimuli(ex.run, layer, unit, n_inits=BOUNDED["n_inits"], steps=BOUNDED["steps"],
                                          seed=SEED)
                ex.store.save(STIMULI, stimuli, options=stimuli_options)
            progress(0.4, f"the {K} most invariant directions (Hessian-vector products, Lanczos)")
            return hessian_invariances(ex.run, at=stimuli, k=K, beta=BETA, seed=SEED)
        _, job = ex.ensure(INVARIANCES, options, f"Optimal stimuli and invariances of {layer} unit {unit}", compute)
    return started(request, job, f"layers/{quoted(layer)}/units/{unit}#invariances")
