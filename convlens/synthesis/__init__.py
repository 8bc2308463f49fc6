"""Images made by optimization (the lecture's class models, inversion, adversarial and fooling images),
all on one optimization core.

- ``optimize``      -- the loop: parametrizations, jitter, between-step regularizers, SGD/Adam/L-BFGS
  (``update_rules``), evaluation without gradients
- ``objectives``    -- composable objectives and priors (``image_priors``: closed-form priors and the
  feature error; ``cpu_kernels``: the same as single-pass numba kernels on CPU)
- ``class_model``, ``inversion``, ``adversarial``, ``fooling`` -- the four methods built on it
- ``optimal_stimuli``, ``invariances`` -- the lecture's "other methods": optima from several starts on a
  sphere (``sphere``), and their invariances from Hessian-vector products and Lanczos (``hessian``) on a
  smooth copy of a ReLU net (``smooth``)
"""
