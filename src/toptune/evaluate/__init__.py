"""After training: test metrics, plots, and warnings about a run that learnt little."""
