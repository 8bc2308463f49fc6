"""The CNN code space (the lecture's nearest neighbours and t-SNE slides).

- ``codes``          -- the vector the classifier receives, streamed and cached; raw pixels as codes
- ``code_agreement`` -- how often an image's nearest neighbours share its class, per layer
- ``neighbors``      -- exact nearest neighbours (blocked matrix products)
- ``tsne``           -- PCA + openTSNE (``tsne_fit``: the optimization schedule), ``tsne_grid``: the
  map snapped onto a full grid, ``projector``: TensorBoard Embedding Projector files, ``tsne_map``: all
  three as ``convlens tsne`` saves them
"""
