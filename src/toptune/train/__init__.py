"""Training: the recipe (set-up, fit), the loop, its history, resume checkpoints, several processes."""
