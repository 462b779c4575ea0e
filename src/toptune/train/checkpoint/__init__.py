"""Resume checkpoints: what one is valid for, how it is stored, which one a run continues."""
