"""The systems that segment: the EEN's fast layers, the three baselines, and the seam between them.

    een.py             the efficient embedding network (the paper's; model.py is its command)
    families.py        what a system brings (network, loss, sampler, whole-case inference), by name
    baselines.py       the baseline modules by family name (what model.py builds for them)
    kermi2018.py       2D residual U-Net on 128x128 axial patches, GDL + weighted CE, SGD
    unet3d_patches.py  3D U-Net on 160x160x16 sub-volumes, soft Dice, Adam, tiled inference
    bennaceur2020.py   selective attention on 64x64 grid patches, weighted CE, post-processing
    common.py          what the baselines share: raw intensities, per-slice normalisation
    fast_layers.py     the EEN's GroupNorm and depth-strided Conv3D (same function, faster)
    fast_updates.py    Keras's Nadam and Adam updating all variables at once (same numbers)
    fast_initializers.py  Keras's JAX initial weights from a few compiled programs (same numbers)
    networks.py        a run's trained networks, found and loaded for prediction

Every baseline module offers the functions families.py gathers into a Family: build, loss,
metrics, optimizer, callbacks, prepare_case, examples, predict_case, postprocess.

May import brats/, util/, datasets/, scoring/ and losses.py (the EEN's loss); never a command.
een.py imports fast_layers.py, fast_initializers.py and baselines.py only, so no import runs in
a circle.
"""
