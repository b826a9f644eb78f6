"""The weight matrices of a transformers model that a method quantizes, whatever layer type holds them.

Three holders exist in transformers 5: `nn.Linear` (weight (out, in)); `Conv1D`, GPT-2's linear layer
with its weight stored transposed (in, out); and fused experts, a module holding one 3-D parameter
per projection with every expert's matrix stacked, (experts, out, in), or (experts, in, out) where the
class says `is_transposed` (`transformers.integrations.moe.use_experts_implementation`). Each expert's
matrix is quantized on its own, with its own groups.

Never quantized: the input embedding, and routers (the matrices held by the block that holds the
experts: Mixtral's `gate`, Qwen2-MoE's `shared_expert_gate`), which are tiny and decide which expert
runs. Skipped by default and configurable: the output head (found by identity, so a tied head too;
`lm_head` in most models). Skips are exact module names, so a typo fails instead of quantizing the
layer it meant to keep.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from quantbench.engines.coverage import Coverage
from quantbench.errors import QuantbenchError

LINEAR, CONV1D, EXPERTS, ROUTER = "linear", "conv1d", "experts", "router"


@dataclass(frozen=True)
class WeightMatrices:
    """`count` matrices of (rows, cols) = (out, in) held by one tensor: `module`'s `attribute`."""

    name: str  # the key: the module's name, plus `.attribute` for a fused experts tensor
    module_name: str
    module: nn.Module
    attribute: str
    kind: str  # linear | conv1d | experts | router
    count: int
    rows: int
    cols: int

    @property
    def layer_type(self) -> str:
        return type(self.module).__name__

    @property
    def numel(self) -> int:
        return self.count * self.rows * self.cols

    def matrices(self) -> torch.Tensor:
        """The matrices as (count, out, in), a view of the stored tensor."""
        tensor = getattr(self.module, self.attribute)
        if self.kind == EXPERTS:
            return tensor.transpose(1, 2) if getattr(self.module, "is_transposed", False) else tensor
        return (tensor.T if self.kind == CONV1D else tensor)[None]

    def replace(self, matrices: torch.Tensor) -> None:
        """Store `matrices` (count, out, in) in place of the weights, in the holder's own orientation. A
        new Parameter rather than an in-place copy: a weight tied to the embedding keeps its original."""
        if self.kind == EXPERTS:
            stored = matrices.transpose(1, 2) if getattr(self.module, "is_transposed", False) else matrices
        else:
            stored = matrices[0].T if self.kind == CONV1D else matrices[0]
        setattr(self.module, self.attribute, nn.Parameter(stored.contiguous(), requires_grad=False))

    def linear(self, index: int = 0) -> nn.Linear:
        """Matrix `index` (an expert's; 0 for a single layer) as the nn.Linear that computes the same
        (what libraries and `Backend.codes` take): an nn.Linear itself, or a new one with the weight in
        (out, in) orientation (a copy where stored transposed) and the bias (fused experts: the row of
        `<attribute>_bias`)."""
        if isinstance(self.module, nn.Linear):
            return self.module
        bias = getattr(self.module, "bias", None)
        if self.kind == EXPERTS:
            bias = getattr(self.module, f"{self.attribute}_bias", None)
            bias = bias[index] if bias is not None else None
        linear = nn.Linear(self.cols, self.rows, bias=bias is not None, device="meta")
        weight = self.matrices()[index]
        linear.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=False)
        return linear


def all_matrices(model: nn.Module, head: bool = False) -> dict[str, WeightMatrices]:
    """Every weight matrix of the transformer blocks, routers included (what `Coverage` counts), and
    the output head too where `head`."""
    from transformers.pytorch_utils import Conv1D

    embeddings = {id(model.get_input_embeddings())} | (set() if head else {id(model.get_output_embeddings())})
    found: dict[str, WeightMatrices] = {}
    moe_blocks = set()
    for name, module in model.named_modules():
        if id(module) in embeddings:
            continue
        if isinstance(module, Conv1D):
            rows, cols = module.weight.shape[1], module.weight.shape[0]
            found[name] = WeightMatrices(name, name, module, "weight", CONV1D, 1, rows, cols)
        elif isinstance(module, nn.Linear):
            found[name] = WeightMatrices(name, name, module, "weight", LINEAR, 1, *module.weight.shape)
        else:
            for attribute, param in module.named_parameters(recurse=False):
                if param.dim() != 3:
                    continue
                count, rows, cols = param.shape
                if getattr(module, "is_transposed", False):
                    rows, cols = cols, rows
                key = f"{name}.{attribute}"
                found[key] = WeightMatrices(key, name, module, attribute, EXPERTS, count, rows, cols)
                moe_blocks.add(name.rpartition(".")[0])
    for name, module in model.named_modules():
        parent, _, _ = name.rpartition(".")
        weight = getattr(module, "weight", None)
        if parent in moe_blocks and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            found[name] = WeightMatrices(name, name, module, "weight", ROUTER, 1, *weight.shape)
    return found


def weight_matrices(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> dict[str, WeightMatrices]:
    """The weight matrices a method quantizes, by name: every linear, Conv1D and fused experts tensor
    of the blocks and the output head, except routers and the modules named in `skip` (exact module
    or tensor names)."""
    skip = tuple(skip)
    found = {name: m for name, m in all_matrices(model, head=True).items() if m.kind != ROUTER}
    known = set(found) | {m.module_name for m in found.values()}
    unknown = [name for name in skip if name not in known]
    if unknown:
        raise QuantbenchError(f"skip names no weight matrix in this model: {', '.join(unknown)}")
    return {name: m for name, m in found.items() if name not in skip and m.module_name not in skip}


def check_group_size(matrices: Iterable[WeightMatrices], group_size: int) -> None:
    """QuantbenchError if `group_size` does not divide the input width of one of `matrices` (-1, one
    group per output row, fits every matrix)."""
    if group_size == -1:
        return
    for m in matrices:
        if m.cols % group_size:
            raise QuantbenchError(f"group_size {group_size} does not divide in_features {m.cols} of layer {m.name}")


def coverage(skeleton: nn.Module, is_stored_low: Callable[[WeightMatrices], bool]) -> Coverage:
    """The Coverage of a model whose block matrices are those of `skeleton` (its architecture, on the
    meta device), with `is_stored_low` saying which of them the method stored in low precision."""
    matrices = all_matrices(skeleton).values()
    low = [m for m in matrices if is_stored_low(m)]
    low_names = {m.name for m in low}
    left = [m for m in matrices if m.name not in low_names]
    return Coverage(
        quantized_weights=sum(m.numel for m in low),
        total_weights=sum(m.numel for m in matrices),
        quantized_matrices=sum(m.count for m in low),
        total_matrices=sum(m.count for m in matrices),
        layers=_types(matrices),
        left=_types(left),
    )


def measured_coverage(skeleton: nn.Module, quantized: nn.Module) -> Coverage:
    """Which of `skeleton`'s block matrices `quantized` (the same architecture after a library
    quantized it, module names kept) holds in low precision: the layer is gone or replaced by a module
    without that tensor (hqq, GPTQModel, torch's dynamic Linear), or the tensor is not floating point
    (bitsandbytes) or wraps its codes in a tensor subclass (torchao, quanto)."""

    def is_stored_low(m: WeightMatrices) -> bool:
        try:
            tensor = getattr(quantized.get_submodule(m.module_name), m.attribute, None)
        except AttributeError:
            return True
        if not isinstance(tensor, torch.Tensor):
            return True
        return not tensor.is_floating_point() or hasattr(tensor, "__tensor_flatten__")

    return coverage(skeleton, is_stored_low)


def rounded_coverage(skeleton: nn.Module, rounded: Iterable[str]) -> Coverage:
    """The Coverage of a method that stores the matrices named `rounded` (`WeightMatrices.name`) in low
    precision, as the project's own methods record while quantizing (fake quantization keeps float
    tensors, so the model alone cannot tell)."""
    names = set(rounded)
    return coverage(skeleton, lambda m: m.name in names)


def _types(matrices: Iterable[WeightMatrices]) -> tuple[tuple[str, int], ...]:
    counts: Counter[str] = Counter()
    for m in matrices:
        counts[m.layer_type] += m.count
    return tuple(sorted(counts.items()))
