"""Plots and statistics of the alignment analyses (:mod:`.distributions`: FiSAO Fig. 1, 2, 4)."""
