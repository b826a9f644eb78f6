"""The stored names of the trackers' measurements, written by the runner and latency and read by the
planner's calibration, the results catalogue and the dashboard. Stores keep these names: never
rename one, or old stores stop reading the same.

Plain strings and no imports, so the planner and the app read them without importing torch.
"""

WEIGHT_BYTES = "weight_bytes"  # the quantized model's weights (backend's exact count), not a tracker's peak
QUANTIZE_SECONDS = "quantize_seconds"
# Share of the block matrices' weights stored in low precision, measured from the quantized model.
QUANTIZED_WEIGHT_FRACTION = "quantized_weight_fraction"

# Each eval's own peaks, measured by the runner around it and tagged with the eval's name and protocol.
PEAK_RSS = "peak_rss_bytes"
PEAK_RSS_FILE = "peak_rss_file_bytes"  # of PEAK_RSS, pages mapped from files (code, mmapped weights)
PEAK_RSS_CODE = "peak_rss_code_bytes"  # of PEAK_RSS_FILE, pages of code files (shared libraries)
CUDA_MAX_ALLOCATED = "cuda_max_allocated_bytes"  # torch's allocator peak (tensors only, no CUDA context)
CUDA_MAX_RESERVED = "cuda_max_reserved_bytes"  # what the caching allocator held from the driver

# The same peaks of quantizing (measured by the runner) and of latency's measured calls.
QUANTIZE_PEAK_RSS = "quantize_" + PEAK_RSS
QUANTIZE_CUDA_MAX_ALLOCATED = "quantize_" + CUDA_MAX_ALLOCATED
INFERENCE_PEAK_RSS = "inference_" + PEAK_RSS
INFERENCE_CUDA_MAX_ALLOCATED = "inference_" + CUDA_MAX_ALLOCATED
INFERENCE_CUDA_MAX_RESERVED = "inference_" + CUDA_MAX_RESERVED
