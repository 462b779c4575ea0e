"""The data's way in: the raw table validated and serialised, token ids, padded batches."""
