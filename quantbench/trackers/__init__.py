"""Instruments, not evals: clock (timing on the device's own timeline), memory (RSS and CUDA
allocator peaks), energy (NVML, RAPL), and the names their measurements are stored under."""
