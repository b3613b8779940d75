"""Real scans into BraTS space and back (issue 29), through BrainLesion's brainles-preprocessing.

    series.py   read and check a patient's raw series; find them in a patient folder
    brainles.py run brainles-preprocessing offline (atlas, HD-BET weights), check its outputs
    native.py   labels from BraTS space back onto the patient's T1c grid; the overlay figure

Imports brats and util only; the commands (prepare.py, predict.py) import it.
"""
