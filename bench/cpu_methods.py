"""The CPU methods the planner is calibrated on, one per library at the setting people use it with.

Shared by bench/calibration.py and bench/planner_overhead.py; a module of its own because
planner_overhead must not import torch into its parent process (children inherit its peak RSS).
bnb:bits=8 is left out for time: its CPU fallback is the slowest forward here.
"""

METHODS = [
    "baseline",
    "rtn:bits=4,group_size=64",
    "bnb:bits=4,quant_type=nf4",
    "torchao:bits=8",
    "quanto:weights=int8",
    "hqq:nbits=4,group_size=64",
]
