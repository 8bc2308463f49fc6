"""What units respond to (the lecture's "visualizing and understanding" slides): one module per method,
each a pure computation returning a result object (figures in ``convlens.plots``).

- ``filters``    -- filter grids and the noisy / correlated / structureless diagnosis (``filter_diagnosis``:
  the measures and verdicts)
- ``patches``    -- top-k patches per unit, streamed, resumable, shardable (``_topk``: the running heaps)
- ``backprop``   -- one modified-gradient core: saliency, deconvnet, guided backprop (and the layer gradient)
- ``gradcam``    -- Grad-CAM, Grad-CAM++, guided Grad-CAM on that core
- ``attribution`` -- SmoothGrad and Integrated Gradients, batched on that core (``attribution_views``: every
  newer map of a few images, for the command and the report)
- ``sanity``     -- Adebayo et al.'s sanity checks of every map (``cascade``: the layers re-initialized from the top)
- ``segment``    -- saliency-seeded GrabCut segmentation
- ``occlusion``  -- occlusion maps (``occlusion_map``: the result) by exact incremental inference
  (``opgraph`` records the forward, ``incremental_plan`` plans which box of each layer a position changes,
  ``incremental`` replays patches of it) or approximately, with the bound of ``occlusion_bound``
"""
