"""Native kernels that XLA lacks, called through jax.ffi; each falls back to XLA where it cannot be built."""
