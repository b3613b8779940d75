"""The field's standard systems as rows of compare.py: nnU-Net v2 and MONAI's SegResNet (PyTorch).

    peers/nnunet.py        the real nnU-Net v2: raw dataset, plan and preprocess, train, predict
    peers/segresnet.py     monai.networks.nets.SegResNet with MONAI's BraTS tutorial settings
    peers/plumbing.py      what both share: the split, the budget clock, timings, writing labels
    peers/compare_rows.py  compare.py's side: each peer's steps in their own measured processes

Each peer is a tool `python -m peers.<name> <step> ...` whose main(argv) compare.py runs in a
child process (so that its peak memory is the system's), like train.py and predict.py.
"""
