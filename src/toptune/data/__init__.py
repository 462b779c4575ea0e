"""The data's way in: the raw table read in record batches, validated and serialised, tokenised into a token
store on disk (read in place), the data split, padded batches."""
