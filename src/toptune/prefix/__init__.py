"""The forward split at the first trainable block: the frozen prefix under ``no_grad``, the top blocks,
the fast kernels and the forward split's self-check."""
