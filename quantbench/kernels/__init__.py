"""quantbench's own low-bit weight format and kernels.

format.py        the packed layout, RTN group quantization, pack/unpack
reference.py     pure-torch dequantize/matmul: the definition every kernel is tested against
triton_matmul.py Triton GEMV / split-K GEMM / GEMM, dispatched by the number of rows
quant_linear.py  QuantLinear, the nn.Linear replacement that picks the path
gptq.py          conversion from GPTQ checkpoints' tensors
awq.py           conversion from AWQ (GEMM layout) checkpoints' tensors
hqq.py           conversion from the hqq library's HQQLinear layers
"""
