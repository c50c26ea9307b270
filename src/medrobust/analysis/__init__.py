"""Analysis of attack results: why and where attacks work.

``chromatic`` (colour distance h of an attack pixel to its neighbours), ``spatial`` (X/Y/colour
statistics and location heatmaps), ``periodicity`` (even/even attack locations against chance)
and ``study`` (the whole one-pixel study from a run store, written as tables and plots).
Submodules are imported on demand, so importing one does not pull in plotting or scipy.
"""
