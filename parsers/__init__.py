"""Exchange protocol decoders and the common normalized schema. Imports numpy (and numba for kernels) only."""
