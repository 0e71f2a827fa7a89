"""Training: recipes, the randomized-depth objective, optimizers, data, the loop, distribution, fine-tuning."""

from .objective import DepthObjective, sample_depth, split_depth
from .recipe import Recipe, RecipeError, load_recipe
from .trainer import Trainer, train

__all__ = ["DepthObjective", "Recipe", "RecipeError", "Trainer", "load_recipe", "sample_depth", "split_depth",
           "train"]
