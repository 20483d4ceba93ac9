"""Visual predictive checks of a fit: simulated new subjects against the observations.

Modules: :mod:`~bayesnlme.vpc.continuous` (VPC and pcVPC of continuous data, BLQ-aware),
:mod:`~bayesnlme.vpc.outcomes` (categorical and Kaplan-Meier VPCs), :mod:`~bayesnlme.vpc.types`
(which check an observation type gets), :mod:`~bayesnlme.vpc.binning` (bins and strata).
"""

from bayesnlme.vpc.binning import assign_bins, bin_edges, observation_strata
from bayesnlme.vpc.continuous import plot_vpc, prediction_correct, vpc, vpc_statistics, vpc_table

__all__ = ["vpc", "vpc_table", "vpc_statistics", "plot_vpc", "prediction_correct", "assign_bins", "bin_edges",
           "observation_strata"]
