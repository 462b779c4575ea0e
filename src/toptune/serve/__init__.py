"""A trained model: its bundle on disk, the merged model, prediction on tables."""
