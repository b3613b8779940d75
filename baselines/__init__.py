"""The three baseline systems of the source documents (BASELINES.md), one module each.

    kermi2018         2D residual U-Net on 128x128 axial patches, GDL + weighted CE, SGD
    unet3d_patches    3D U-Net on 160x160x16 sub-volumes, soft Dice, Adam, tiled inference
    bennaceur2020     selective attention on 64x64 grid patches, weighted CE, post-processing
    common            raw intensities from the cache, per-slice normalisation, slice inference

Every module offers the same functions, which families.py gathers into a Family: build, loss,
metrics, optimizer, callbacks, prepare_case, examples, predict_case, postprocess.
"""
