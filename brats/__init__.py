"""What BraTS is on disk: the case folders of every edition and their label codings.

    cases.py    find and read cases of any layout (2017-2025, MSD Task01): MODALITIES, Case
    codings.py  which labels form WT, TC and ET in each edition; regions -> labels and back

Imports nothing of the project: every other package may use it.
"""
