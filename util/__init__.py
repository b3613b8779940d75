"""What a run needs around the science: configuration, safe files, devices, figures, run folders.

    config.py     the typed configuration (configs/*.yaml) and its one-line errors
    outputs.py    atomic writes and one-line refusals for unwritable or full outputs
    devices.py    GPU / CPU replicas and the distribution strategy of a training
    figures.py    training curves and figures saved atomically
    runfolder.py  reading a run folder's files, each refused in one line when damaged; the lock

May import brats/ only.
"""
