"""How much of a model's matrix weights a method stored in low precision: a fact every engine
reports about the model it runs (`QuantizedModel.coverage`), measured from the quantized model."""

from __future__ import annotations

from dataclasses import dataclass

# Above this share of matrix weights left in float, a result says so beside its label.
UNQUANTIZED_NOTE_SHARE = 1 / 3


@dataclass(frozen=True)
class Coverage:
    """The weight matrices of the transformer blocks (every linear layer, Conv1D and fused expert
    matrix outside the input embedding and the output head; routers included) and how many of
    them, and of their weights, are stored in low precision. `layers` and `left` name each layer
    type (its class name) with its matrix count, all of them and those left in float."""

    quantized_weights: int
    total_weights: int
    quantized_matrices: int
    total_matrices: int
    layers: tuple[tuple[str, int], ...] = ()
    left: tuple[tuple[str, int], ...] = ()

    @property
    def fraction(self) -> float:
        """quantized_weights / total_weights (0 for a model without block matrices)."""
        return self.quantized_weights / self.total_weights if self.total_weights else 0.0

    def nothing_quantized(self, method: str) -> str:
        """The one-line reason a trial of `method` that quantized nothing fails with."""
        return (
            f"{method} quantized 0 of {self.total_matrices} weight matrices: "
            f"the model's layers are {_counts(self.layers) or 'none it recognizes'}"
        )

    def unquantized_note(self) -> str:
        """What a result says when more than a third of the matrix weights stayed in float; "" otherwise."""
        if 1 - self.fraction <= UNQUANTIZED_NOTE_SHARE:
            return ""
        return (
            f"{1 - self.fraction:.0%} of the matrix weights left unquantized "
            f"({self.total_matrices - self.quantized_matrices} of {self.total_matrices} matrices: {_counts(self.left)})"
        )


def _counts(types: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{name} ×{count}" for name, count in types)
