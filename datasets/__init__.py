"""From BraTS cases to what a network trains on, and back to the case's grid.

    volumes.py   crop, block-average, z-score, nested regions; full_grid puts outputs back
    cache.py     the preprocess cache, memory-mapped (Cache)
    pipeline.py  the epoch order of cases and the global batch across replicas and hosts
    examples.py  the baselines' patches and slices from cached cases, per epoch
    domain.py    domain randomisation: synthetic cases of a new world each (synthetic.py
                 --world randomised) and another acquisition per training step (jitter)

May import brats/ and util/.
"""
