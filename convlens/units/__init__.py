"""What units respond to (the lecture's "visualizing and understanding" slides): one module per method,
each a pure computation returning a result object (figures in ``convlens.plots``).

- ``filters``    -- filter grids and the noisy / correlated / structureless diagnosis
- ``patches``    -- top-k patches per unit, streamed, resumable, shardable (``_topk``: the running heaps)
- ``backprop``   -- one modified-gradient core: saliency, deconvnet, guided backprop
- ``segment``    -- saliency-seeded GrabCut segmentation
- ``occlusion``  -- occlusion maps (``occlusion_map``: the result) by exact incremental inference
  (``opgraph`` records the forward, ``incremental`` replays patches of it) or approximately, with the
  bound of ``occlusion_bound``
"""
