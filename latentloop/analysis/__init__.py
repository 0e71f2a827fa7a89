"""Looking inside the latent space: trajectories, PCA, their classes and path independence."""

from .classify import Classification, classify_tokens, classify_trajectory
from .inspect import Inspection, inspect_sequence
from .path_independence import PathIndependence, path_independence
from .pca import PCA, fit_pca
from .trajectories import Trajectories, collect_trajectories

__all__ = ["PCA", "Classification", "Inspection", "PathIndependence", "Trajectories", "classify_tokens",
           "classify_trajectory", "collect_trajectories", "fit_pca", "inspect_sequence", "path_independence"]
