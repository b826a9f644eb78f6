"""lm-evaluation-harness's `LM` interface on the model protocol's `logits`, for any engine.

It scores exactly as lm-eval's `HFLM` (0.4.x, `lm_eval/models/huggingface.py`) scores a causal
transformers module, so task numbers do not depend on which of the two ran them:
- tokenization: `TemplateLM` splits context and continuation (trailing context spaces move to
  the continuation; both encoded whole, then split) with `tok_encode` below, HFLM's: the
  tokenizer's own special tokens, none when the text already starts with the prefix token;
- left truncation of context + continuation to `context_length` + 1 tokens, the last dropped;
- the same request order and batches (lm-eval's `Collator`, longest first, one forward per
  group of one-token continuations sharing a context), right-padded with token 0;
- log-softmax in the dtype the engine computes logits in (HFLM's `softmax_dtype=None`): the
  protocol's fp32 logits are an exact upcast, so casting back loses nothing. It is taken over the
  continuation's positions only (HFLM takes it over the whole batch and keeps those): the same
  floats, since each position is normalized on its own.
Rolling log-likelihoods (perplexity-style tasks) use lm-eval's own rolling windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from quantbench.engines.protocol import QuantizedModel
from quantbench.errors import QuantbenchError
from quantbench.evals import progress

PROGRESS_CHUNK = 32  # log-likelihood requests between two progress reports (at least)

Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (strings, context ids, continuation ids)


class ProtocolLM(TemplateLM):
    def __init__(self, model: QuantizedModel, batch_size: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = model.tokenizer
        self.batch_size = batch_size

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.model.context_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and string.startswith(self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """All requests ordered and batched together, as HFLM does (one document is one request per
        choice); lm-eval's bars stay off, progress is reported every PROGRESS_CHUNK requests."""
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(
        self, requests: list[Request], report_progress: bool = True, **kwargs
    ) -> list[tuple[float, bool]]:
        def longest_first(req: Request) -> tuple:
            tokens = req[1] + req[2]
            return -len(tokens), tuple(tokens)

        order = Collator(requests, sort_fn=longest_first, group_by="contexts", group_fn=lambda r: r[-2] + r[-1][:-1])
        results, reported = [], 0
        for chunk in order.get_batched(n=self.batch_size):
            inputs = [
                torch.tensor((context + continuation)[-(self.max_length + 1) :][:-1], dtype=torch.long)
                for _, context, continuation in chunk
            ]
            lengths = [len(i) for i in inputs]
            padded = pad_and_concat(max(lengths), inputs, padding_side="right")  # pads `inputs` in place
            logits = self.model.logits(padded)
            for (strings, context, continuation), row, length in zip(chunk, logits, lengths, strict=True):
                # Only the continuation's positions are scored, and log-softmax is per position: normalizing
                # those alone gives HFLM's floats exactly without normalizing the rest of the window.
                scored = row[length - len(continuation) : length].to(self.model.logits_dtype)
                scored = F.log_softmax(scored, dim=-1)[None]  # (1, continuation, vocab)
                greedy = scored.argmax(dim=-1)
                for strings_, continuation_, scored_ in order.get_cache(
                    req_str=strings, cxt_toks=context, cont_toks=continuation, logits=scored
                ):
                    target = torch.tensor(continuation_, dtype=torch.long)[None]
                    exact = bool((greedy[:, -target.shape[1] :] == target).all())
                    answer = (float(torch.gather(scored_, 2, target[..., None]).sum()), exact)
                    results.append(answer)
                    if strings_ is not None:
                        self.cache_hook.add_partial("loglikelihood", strings_, answer)
            if report_progress and (len(results) - reported >= PROGRESS_CHUNK or len(results) == len(requests)):
                progress.report(len(results), len(requests))
                reported = len(results)
        return order.get_original(results)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood over lm-eval's disjoint rolling windows, `batch_size` windows per call."""
        windows: list[tuple[int, Request]] = []
        for index, (text,) in enumerate(req.args for req in requests):
            pairs = get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1)
            windows += [(index, (None, *make_disjoint_window(pair))) for pair in pairs]
        totals = [0.0] * len(requests)
        for at in range(0, len(windows), self.batch_size):
            batch = windows[at : at + self.batch_size]
            scored = self._loglikelihood_tokens([w for _, w in batch], report_progress=False)
            for (index, _), (logprob, _) in zip(batch, scored, strict=True):
                totals[index] += logprob
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        raise QuantbenchError("the tasks eval scores log-likelihood tasks only; generation tasks are not supported")
