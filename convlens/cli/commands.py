"""Imports every command module so that each registers its command(s) on the app."""
from . import arch_cmds  # noqa: F401  describe, zoo
from . import gradcheck_cmd  # noqa: F401  gradcheck
from . import report_cmds  # noqa: F401  report, results, demo
from . import summary_cmd  # noqa: F401  summary
from . import train_cmds  # noqa: F401  train, evaluate
from . import wrap_cmd  # noqa: F401  wrap
from . import insight_probe_cmds  # noqa: F401  probe, ablate
from . import insight_health_cmd  # noqa: F401  health
from . import insight_invariance_cmds  # noqa: F401  invariance, fool-linear
from . import class_model_cmds  # noqa: F401  class-model, fooling
from . import backprop_cmds  # noqa: F401  saliency
from . import patches_cmds  # noqa: F401  top-patches
from . import filters_cmds  # noqa: F401  filters
from . import occlusion_cmds  # noqa: F401  occlusion
from . import inversion_cmds  # noqa: F401  invert
from . import adversarial_cmds  # noqa: F401  adversarial
from . import codes_cmds  # noqa: F401  codes, neighbors, tsne
from . import serve_cmd  # noqa: F401  serve
from . import precompute_cmd  # noqa: F401  precompute
from . import sanity_cmd  # noqa: F401  sanity
from . import invariances_cmds  # noqa: F401  invariances
