import math

import pytest
import torch
from pydantic import ValidationError
from support import SHARED_DATA, WIKITEXT_TEST

from quantbench import models
from quantbench.corpora import Corpus
from quantbench.engines.torch_model import TorchModel
from quantbench.errors import QuantbenchError
from quantbench.evals import tasks
from quantbench.evals.perplexity import PerplexityParams, evaluate
from quantbench.spec import ModelRef

LOCAL = {
    "lambada_openai": SHARED_DATA / "lambada_openai" / "lambada_test.jsonl",
    "piqa": SHARED_DATA / "piqa" / "valid.jsonl",
    "arc_easy": SHARED_DATA / "arc" / "ARC-Easy-Test.jsonl",
    "winogrande": SHARED_DATA / "winogrande" / "dev.jsonl",
    "hellaswag": SHARED_DATA / "hellaswag" / "hellaswag_val_full.txt.bz2",
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    source = models.resolve(ModelRef(str(tiny_model_dir)))
    return TorchModel(models.load(source), models.load_tokenizer(source), "cpu", 0, 32.0, "test")


@pytest.mark.parametrize(
    ("task", "rows", "first"),
    [
        ("lambada_openai", 5153, {"text"}),
        ("piqa", 1838, {"goal", "sol1", "sol2", "label"}),
        ("arc_easy", 2376, {"id", "question", "choices", "answerKey"}),
        ("winogrande", 1267, {"sentence", "option1", "option2", "answer"}),
        ("hellaswag", 10042, {"activity_label", "ctx_a", "ctx_b", "endings", "label"}),
    ],
)
def test_the_shared_data_converts_to_the_rows_of_the_stock_datasets(task, rows, first):
    converted = tasks.local_rows(task, str(LOCAL[task]))
    assert len(converted) == rows and first <= set(converted[0])


def test_conversions_keep_answers_where_the_stock_task_expects_them():
    piqa = tasks.local_rows("piqa", str(LOCAL["piqa"]))
    assert (piqa[0]["label"], piqa[1]["label"]) == (0, 1)  # valid-labels.lst starts 0, 1
    arc = tasks.local_rows("arc_easy", str(LOCAL["arc_easy"]))[0]
    assert arc["choices"]["label"] == ["A", "B", "C", "D"] and arc["answerKey"] == "A"
    assert arc["question"].startswith("Which statement best explains")
    (hella,) = tasks.local_rows("hellaswag", str(LOCAL["hellaswag"]))[:1]
    assert hella["activity_label"] == "Roof shingle removal" and hella["label"] == "3"
    assert hella["ctx_a"] == "A man is sitting on a roof. he" and len(hella["endings"]) == 4


@pytest.mark.parametrize(
    ("task", "name", "content", "message"),
    [
        ("lambada_openai", "a.jsonl", '{"sentence": "x"}\n', "lambada_openai needs fields text; missing text"),
        ("lambada_openai", "a.jsonl", '{"text": "x"}\nnot json\n', "line 2: not valid JSON"),
        ("lambada_openai", "a.jsonl", "[1, 2]\n", "line 1: not a JSON object"),
        ("lambada_openai", "a.jsonl", "\n", "holds no rows"),
        ("piqa", "valid.jsonl", '{"goal": "g", "sol1": "a", "sol2": "b"}\n', "no 'label' and there is no valid-labels"),
        ("piqa", "valid.jsonl", '{"goal": "g", "sol2": "b", "label": 0}\n', "missing sol1"),
        ("arc_easy", "arc.jsonl", '{"question": {"stem": "q"}, "answerKey": "A"}\n', "needs 'stem' and 'choices'"),
        (
            "arc_easy",
            "arc.jsonl",
            '{"question": "q", "choices": {"text": ["x"], "label": ["A"]}, "answerKey": "B"}\n',
            "answerKey is not one of the choice labels",
        ),
        ("winogrande", "dev.jsonl", '{"sentence": "_ x", "option1": "a", "option2": "b"}\n', "no 'answer'"),
        ("hellaswag", "h.txt", "a: b\n1\nx\ny\nz\n", "6 lines per item, got 5 lines"),
        ("hellaswag", "h.txt", "no colon\n1\nw\nx\ny\nz\n", "line 1: not 'activity: context'"),
        ("hellaswag", "h.txt", "a: b\n7\nw\nx\ny\nz\n", "followed by a label 0-3"),
        ("boolq", "b.json", '{"question": "q"}', "expected a JSON list of objects"),
        ("boolq", "b.json", "[{", "not valid JSON"),
        ("lambada_openai", "a.jsonl", b"\xff\xfe\x00", "cannot read it"),
    ],
)
def test_a_data_file_of_the_wrong_shape_is_one_line_error(tmp_path, task, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(QuantbenchError, match=message) as error:
        tasks.local_rows(task, str(path))
    assert "\n" not in str(error.value)


def test_labels_beside_the_data_must_match_its_rows(tmp_path):
    (tmp_path / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 2)
    (tmp_path / "valid-labels.lst").write_text("0\n")
    with pytest.raises(QuantbenchError, match=r"2 rows but 1 labels in valid-labels\.lst"):
        tasks.local_rows("piqa", str(tmp_path / "valid.jsonl"))


def test_a_missing_data_file_is_refused(tmp_path):
    with pytest.raises(QuantbenchError, match=r"task data for piqa: .* does not exist"):
        tasks.local_rows("piqa", str(tmp_path / "nope.jsonl"))


def test_params_take_the_cli_forms():
    params = tasks.TasksParams(tasks="piqa, arc_easy", task_data=["piqa=data/valid.jsonl"])
    assert params.tasks == ("piqa", "arc_easy")
    assert params.task_data["piqa"].endswith("/data/valid.jsonl") and params.task_data["piqa"].startswith("/")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task_data": ["piqa"]}, "is not of the form task=path"),
        ({"task_data": ["=x.jsonl"]}, "is not of the form task=path"),
        ({"task_data": ["piqa="]}, "is not of the form task=path"),
        (
            {"tasks": "lambada_openai", "task_data": ["piqa=x"]},
            "task data given for piqa, which is not among the tasks",
        ),
        ({"tasks": " , "}, "no task given"),
        ({"limit": 0}, "limit"),
        ({"num_fewshot": -1}, "num_fewshot"),
    ],
)
def test_invalid_params_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        tasks.TasksParams(**fields)


@pytest.mark.parametrize(
    ("task", "message"),
    [("lambada_opeani", "lm-eval does not know the task 'lambada_opeani'"), ("ai2_arc", "is an lm-eval tag")],
)
def test_a_task_lm_eval_does_not_know_is_refused_before_any_work(task, message):
    params = tasks.TasksParams(tasks=task)
    with pytest.raises(QuantbenchError, match=message):
        tasks.check_inputs(None, params, None)


def test_stock_tasks_on_local_data_report_accuracy_and_stderr(tiny):
    params = tasks.TasksParams(
        tasks="lambada_openai,piqa,hellaswag",
        task_data=[f"{t}={LOCAL[t]}" for t in ("lambada_openai", "piqa", "hellaswag")],
        limit=3,
    )
    tasks.check_inputs(None, params, None)
    rows = {name: value for name, value, _ in tasks.run(tiny, params, None, None)}
    for task in params.tasks:
        assert 0 <= rows[f"task:{task}:acc"] <= 1 and rows[f"task:{task}:acc_stderr"] >= 0
        assert rows[f"task:{task}:samples"] == 3
    assert rows["task:lambada_openai:perplexity"] > 1 and "task:piqa:acc_norm" in rows


def test_metric_names_carry_a_non_default_filter():
    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.5,
                "exact_match_stderr,strict-match": 0.1,
                "acc,none": 0.25,
                "acc_stderr,none": "N/A",
            }
        },
        "n-samples": {"gsm8k": {"original": 10, "effective": 4}},
    }
    assert tasks.metric_rows(results) == [
        ("task:gsm8k:exact_match@strict-match", 0.5, ""),
        ("task:gsm8k:exact_match_stderr@strict-match", 0.1, ""),
        ("task:gsm8k:acc", 0.25, ""),
        ("task:gsm8k:samples", 4.0, "docs"),
    ]


def _lm_eval_rolling(module, tokenizer, document: str) -> tuple[float, float, str]:
    """lm-eval's own word perplexity and bits per byte of one document (its wikitext task's math)."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=module, tokenizer=tokenizer, batch_size=1)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(document,), idx=0)
    (loglikelihood,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
    words, n_bytes = len(document.split()), len(document.encode())
    prefix = tokenizer.convert_ids_to_tokens(lm.prefix_token_id)
    return weighted_perplexity([(loglikelihood, words)]), bits_per_byte([(loglikelihood, n_bytes)]), prefix


def _cross_check(module, tokenizer, document: str) -> None:
    """lm-eval scores every token of the document, the first one after its prefix token (BOS, else
    EOS), each with all earlier tokens as context when the document fits in one window. quantbench
    scores every token after the first of its window. So the quantbench corpus is the prefix token
    followed by the document, in one window of exactly that length: the same tokens, each with the
    same context, and the covered text (its bytes and words) is the document."""
    word_ppl, bpb, prefix = _lm_eval_rolling(module, tokenizer, document)
    text = prefix + document
    n = len(tokenizer(text)["input_ids"])
    assert n == 1 + len(tokenizer(document)["input_ids"])  # the prefix stays one token
    ours = evaluate(
        lambda ids: module(input_ids=ids).logits, tokenizer, Corpus("doc", (text,)), PerplexityParams(seq_len=n)
    )
    assert ours.tokens_scored == n - 1
    assert ours.word_perplexity == pytest.approx(word_ppl, rel=1e-3)
    assert ours.bits_per_byte == pytest.approx(bpb, rel=1e-3)


def _document(max_chars: int) -> str:
    """Whole WikiText-2 paragraphs, stripped (leading/trailing whitespace would count as words differently)."""
    paragraphs = [p.strip() for p in WIKITEXT_TEST.read_text().split("\n \n") if len(p.strip()) > 200]
    return paragraphs[1][:max_chars].rsplit(" ", 1)[0]


def test_word_perplexity_and_bits_per_byte_equal_lm_evals_rolling_loglikelihood(tiny):
    _cross_check(tiny.module, tiny.tokenizer, _document(800))  # < 512 tokens: the tiny model's window


@pytest.mark.slow
def test_the_cross_check_holds_on_the_real_model():
    source = models.resolve(ModelRef("embedded:smollm2-135m"))
    _cross_check(models.load(source), models.load_tokenizer(source), _document(3000))


@pytest.mark.slow
def test_tasks_on_the_real_model_beat_chance_on_average(tmp_path):
    source = models.resolve(ModelRef("embedded:smollm2-135m"))
    model = TorchModel(models.load(source), models.load_tokenizer(source), "cpu", 0, 32.0, "test")
    params = tasks.TasksParams(
        tasks="lambada_openai,piqa", task_data=[f"{t}={LOCAL[t]}" for t in ("lambada_openai", "piqa")], limit=20
    )
    rows = tasks.run(model, params, None, None)
    assert {name for name, _, _ in rows} == {
        f"task:{task}:{metric}"
        for task, metrics in (("lambada_openai", ("perplexity", "acc")), ("piqa", ("acc", "acc_norm")))
        for metric in (*metrics, *(f"{m}_stderr" for m in metrics), "samples")
    }
    assert all(type(value) is float for _, value, _ in rows)  # plain floats, ready for the store
    values = {name: value for name, value, _ in rows}
    # SmolLM2-135M: lambada_openai ~0.4, piqa ~0.65 on the full sets; 20 documents leave wide margins.
    assert values["task:lambada_openai:acc"] >= 0.1 and values["task:piqa:acc"] >= 0.45
    for accuracy in ("task:lambada_openai:acc", "task:piqa:acc", "task:piqa:acc_norm"):
        assert 20 * values[accuracy] == round(20 * values[accuracy])  # a count of right documents out of 20
    assert math.isfinite(values["task:lambada_openai:perplexity"])
    assert values["task:piqa:samples"] == values["task:lambada_openai:samples"] == 20


def _requests(tokenizer) -> list:
    """Log-likelihood requests of every shape lm-eval sends: plain, a context ending in spaces (moved
    to the continuation), an empty context (the prefix token stands in), one-token continuations
    sharing a context (scored from one forward), and one too long for the tiny model's 512 positions
    (left-truncated)."""
    from lm_eval.api.instance import Instance

    long_context = " ".join(["The quick brown fox jumps over the lazy dog."] * 80)
    assert len(tokenizer(long_context)["input_ids"]) > 512
    pairs = [
        ("The function returns", " a list of values."),
        ("A module is a file containing  ", "Python definitions."),
        ("", "Hello world"),
        ("Exceptions are raised by the", " raise"),
        ("Exceptions are raised by the", " try"),
        ("Exceptions are raised by the", " statement and caught"),
        (long_context, " The end."),
    ]
    return [Instance("loglikelihood", {}, pair, idx) for idx, pair in enumerate(pairs)]


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16: HFLM's log-softmax runs in bf16
def test_the_protocol_lm_scores_exactly_as_lm_evals_hflm(tiny_model_dir, batch_size, dtype):
    from lm_eval.models.huggingface import HFLM

    from quantbench.evals.protocol_lm import ProtocolLM

    source = models.resolve(ModelRef(str(tiny_model_dir)))
    model = TorchModel(models.load(source, dtype=dtype), models.load_tokenizer(source), "cpu", 0, 32.0, "test")
    assert model.logits_dtype == models.DTYPES[dtype]
    requests = _requests(model.tokenizer)
    ours = ProtocolLM(model, batch_size).loglikelihood(requests)
    theirs = HFLM(pretrained=model.module, tokenizer=model.tokenizer, batch_size=batch_size).loglikelihood(requests)
    assert ours == theirs  # the same floats, not merely close
    assert len(ours) == len(requests) and all(logprob < 0 for logprob, _ in ours)


def _many_requests(tokenizer) -> list:
    """More requests than one progress chunk: _requests' shapes and 20 piqa documents' two choices."""
    from lm_eval.api.instance import Instance

    piqa = tasks.local_rows("piqa", str(LOCAL["piqa"]))[:20]
    pairs = [(f"Question: {row['goal']}\nAnswer:", f" {row[sol]}") for row in piqa for sol in ("sol1", "sol2")]
    extra = [Instance("loglikelihood", {}, pair, 100 + i) for i, pair in enumerate(pairs)]
    return _requests(tokenizer) + extra


def test_batches_form_over_all_requests_as_hflms_and_score_as_one_at_a_time(tiny):
    from lm_eval.models.huggingface import HFLM

    from quantbench.evals.protocol_lm import PROGRESS_CHUNK, ProtocolLM

    requests = _many_requests(tiny.tokenizer)
    assert len(requests) > PROGRESS_CHUNK
    batched = ProtocolLM(tiny, 8).loglikelihood(requests)
    assert batched == HFLM(pretrained=tiny.module, tokenizer=tiny.tokenizer, batch_size=8).loglikelihood(requests)
    alone = ProtocolLM(tiny, 1).loglikelihood(requests)
    assert [greedy for _, greedy in batched] == [greedy for _, greedy in alone]
    assert [logprob for logprob, _ in batched] == pytest.approx([logprob for logprob, _ in alone], rel=1e-5, abs=1e-5)


def test_the_protocol_lm_rolling_loglikelihood_equals_hflms(tiny):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from quantbench.evals.protocol_lm import ProtocolLM

    documents = [_document(800), _document(3000)]  # the second spans several 512-token windows
    requests = [Instance("loglikelihood_rolling", {}, (doc,), i) for i, doc in enumerate(documents)]
    ours = ProtocolLM(tiny, 2).loglikelihood_rolling(requests)
    theirs = HFLM(pretrained=tiny.module, tokenizer=tiny.tokenizer, batch_size=2).loglikelihood_rolling(requests)
    assert ours == theirs


def test_generation_tasks_are_refused_in_one_line(tiny):
    from quantbench.evals.protocol_lm import ProtocolLM

    with pytest.raises(QuantbenchError, match="scores log-likelihood tasks only"):
        ProtocolLM(tiny, 1).generate_until([])


def _choice_logprob(module, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) straight from the module: the whole text tokenized once, the
    continuation being the tokens after the context's."""
    context_ids = tokenizer(context)["input_ids"]
    ids = torch.tensor([tokenizer(context + continuation)["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(module(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, len(context_ids) :]
    return logprobs[len(context_ids) - 1 :].gather(1, targets[:, None]).sum().item()


def test_piqa_accuracy_equals_the_hand_computed_choices(tiny, tmp_path):
    """piqa's stock prompt is "Question: <goal>\nAnswer:" and the choices follow after a space: a
    document is right when its labelled solution has the higher log-likelihood."""
    rows = tasks.local_rows("piqa", str(LOCAL["piqa"]))[:8]
    right = 0
    for row in rows:
        context = f"Question: {row['goal']}\nAnswer:"
        scores = [_choice_logprob(tiny.module, tiny.tokenizer, context, " " + row[s]) for s in ("sol1", "sol2")]
        right += scores.index(max(scores)) == row["label"]
    params = tasks.TasksParams(tasks="piqa", task_data=[f"piqa={LOCAL['piqa']}"], limit=8)
    values = {name: value for name, value, _ in tasks.run(tiny, params, None, None)}
    assert 0 < right < 8  # the case tells right from wrong
    assert values["task:piqa:acc"] == right / 8
    assert values["task:piqa:samples"] == 8
