"""The external formats' packing loops, written out from their sources, so the converters are
tested against the layouts as their authors wrote them (not against our own unpacking)."""

import torch


def to_int32(words: torch.Tensor) -> torch.Tensor:
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def gptq_pack_3bit_rows(values: torch.Tensor) -> torch.Tensor:
    """AutoGPTQ's 3-bit packing loop (QuantLinear.pack) along dim 0: 32 codes in 3 words, codes 10
    and 21 of each run split across two words."""
    values = values.to(torch.int64)
    words = torch.zeros(values.shape[0] * 3 // 32, values.shape[1], dtype=torch.int64)
    i = row = 0
    while row < words.shape[0]:
        for j in range(i, i + 10):
            words[row] |= values[j] << (3 * (j - i))
        i += 10
        words[row] |= values[i] << 30
        row += 1
        words[row] |= (values[i] >> 2) & 1
        i += 1
        for j in range(i, i + 10):
            words[row] |= values[j] << (3 * (j - i) + 1)
        i += 10
        words[row] |= values[i] << 31
        row += 1
        words[row] |= (values[i] >> 1) & 3
        i += 1
        for j in range(i, i + 10):
            words[row] |= values[j] << (3 * (j - i) + 2)
        i += 10
        row += 1
    return to_int32(words)


def gptq_pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """GPTQ's packing (AutoGPTQ QuantLinear.pack), along K (dim 0) for qweight or N (dim 1) for
    qzeros: for 2/4/8 bits value j of each run of 32/bits goes to bits·j of one int32 word; 3 bits
    use the loop above (qzeros: the same loop over columns)."""
    values = values.to(torch.int64) & (2**bits - 1)
    runs = values.T if dim == 1 else values
    if bits == 3:
        words = gptq_pack_3bit_rows(runs)
    else:
        per_word = 32 // bits
        words = torch.zeros(runs.shape[0] // per_word, runs.shape[1], dtype=torch.int64)
        for j in range(per_word):
            words |= runs[j::per_word] << (bits * j)
        words = to_int32(words)
    return words.T.contiguous() if dim == 1 else words


AWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pack(values: torch.Tensor) -> torch.Tensor:
    """AutoAWQ's WQLinear_GEMM.pack loop (4 bits, along the columns): word `col` holds, in nibble
    i, the value of column col·8 + order_map[i]."""
    values = values.to(torch.int64)
    words = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
    for col in range(values.shape[1] // 8):
        for i in range(8):
            words[:, col] |= values[:, col * 8 + AWQ_ORDER_MAP[i]] << (i * 4)
    return to_int32(words)
