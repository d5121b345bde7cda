# HIP backend (filled in with the HIP kernels).
