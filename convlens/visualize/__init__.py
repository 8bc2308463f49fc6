"""What units respond to and what images maximize a score (the lecture's visualization half).

One module per capability, each a pure computation returning a result object (plots live in
``convlens.plots``, report sections in ``convlens.report.sections``):

- ``targets``      -- class targets given as index, class name, or one per image
- ``filters``      -- filter grids and the noisy / correlated / structureless diagnosis
- ``patches``      -- top-k patches per unit, streamed, resumable, shardable
- ``backprop``     -- one modified-gradient core: saliency, deconvnet, guided backprop
- ``segment``      -- saliency-seeded GrabCut segmentation
- ``occlusion``    -- occlusion maps with exact incremental inference
- ``optimize``     -- one image-optimization core (objectives, parametrization, regularizers)
- ``class_model``, ``inversion``, ``adversarial``, ``fooling`` -- built on ``optimize``
- ``codes``, ``neighbors``, ``tsne``, ``projector`` -- the CNN code space
"""
