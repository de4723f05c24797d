"""Hugging Face helpers on a tiny BERT built from a config (random weights, nothing downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

import mcdrop  # noqa: E402
from mcdrop import metrics  # noqa: E402
from mcdrop.transformers import (  # noqa: E402
    MCDropoutTextClassifier,
    MCDropoutTrainerCallback,
    evaluate,
    predict_with_uncertainty,
)

WORDS = "good great fine bad awful poor movie plot actor the a was is very not".split()


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=32,
    )


def _model() -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=4 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "NEG", 1: "POS"},
        label2id={"NEG": 0, "POS": 1},
        hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.1,
    )
    return transformers.BertForSequenceClassification(config).eval()


def _texts(n: int = 40) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(0)
    pos, neg = ["good", "great", "fine"], ["bad", "awful", "poor"]
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        word = rng.choice(pos if label else neg)
        length = int(rng.integers(0, 4))  # different lengths: needs padding
        texts.append(" ".join(["the", "movie", "was", *["very"] * length, str(word)]))
        labels.append(label)
    return texts, labels


def _dataset(tokenizer) -> datasets.Dataset:
    texts, labels = _texts()
    raw = datasets.Dataset.from_dict({"text": texts, "label": labels})
    return raw.map(lambda batch: tokenizer(batch["text"], truncation=True), batched=True)


def _flags(model) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_dataset_labels_become_targets_and_are_not_passed_to_the_model() -> None:
    tokenizer, model = _tokenizer(), _model()
    data = _dataset(tokenizer)
    seen: list[set[str]] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    try:
        result = predict_with_uncertainty(
            model, data, tokenizer=tokenizer, n_samples=8, seed=0, batch_size=40, strategy="loop"
        )
    finally:
        hook.remove()
    assert isinstance(result, mcdrop.ClassificationResult)
    assert result.mean.shape == (40, 2)
    assert result.targets.tolist() == data["label"]
    assert seen and all("labels" not in kw and "label" not in kw for kw in seen)
    # the same as mcdrop on the padded tensors themselves, given as one (inputs, targets)
    # batch of a DataLoader (iterating a DataLoader draws its base seed from the RNG)
    padded = dict(tokenizer(_texts()[0], padding=True, return_tensors="pt"))
    one_batch = torch.utils.data.DataLoader(
        [0], collate_fn=lambda _: (padded, torch.tensor(_texts()[1]))
    )
    direct = mcdrop.predict_with_uncertainty(model, one_batch, n_samples=8, seed=0, strategy="loop")
    torch.testing.assert_close(result.mean, direct.mean)


def test_dataset_without_model_columns_says_to_tokenize() -> None:
    raw = datasets.Dataset.from_dict({"text": ["good movie"], "label": [1]})
    with pytest.raises(ValueError, match=r"column 'input_ids'.*tokenize it first"):
        predict_with_uncertainty(_model(), raw, n_samples=2)


def test_unpadded_rows_without_tokenizer_say_to_pad() -> None:
    data = _dataset(_tokenizer())
    with pytest.raises(ValueError, match="need padding: pass `tokenizer=`"):
        predict_with_uncertainty(_model(), data, n_samples=2, batch_size=40)


def test_trainer_helper_callback_and_model_left_as_it_was(tmp_path) -> None:
    tokenizer, model = _tokenizer(), _model()
    data = _dataset(tokenizer).remove_columns("text")
    flags, state = _flags(model), _state(model)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=16,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = MCDropoutTrainerCallback(n_samples=8, seed=0)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        eval_dataset=data,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        callbacks=[callback],
    )
    values = evaluate(trainer, n_samples=8, seed=0)
    keys = {"accuracy", "nll", "brier", "ece", "misclassification_auroc", "mutual_information"}
    assert set(values) == {f"eval_mc_{k}" for k in keys}
    assert trainer.state.log_history[-1]["eval_mc_nll"] == values["eval_mc_nll"]
    # against the functional metrics on a result from the eval DataLoader itself
    result = predict_with_uncertainty(model, trainer.get_eval_dataloader(), n_samples=8, seed=0)
    assert values["eval_mc_nll"] == pytest.approx(
        metrics.negative_log_likelihood(result.targets, result.mean)
    )
    assert values["eval_mc_mutual_information"] == pytest.approx(
        float(result.mutual_information.mean())
    )
    # the callback runs inside trainer.evaluate() and adds to what it returns
    returned = trainer.evaluate()
    assert returned["eval_mc_nll"] == pytest.approx(values["eval_mc_nll"])
    assert "eval_loss" in returned
    # the model: every flag (BERT's dropout too) and every weight as before
    assert _flags(trainer.model) == flags
    for key, value in _state(trainer.model).items():
        assert torch.equal(value, state[key]), key


def test_text_classification_pipeline_wrapper() -> None:
    tokenizer, model = _tokenizer(), _model()
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)
    classify = MCDropoutTextClassifier(pipe, n_samples=8, seed=0)
    texts = _texts(6)[0]
    rows = classify(texts)
    assert len(rows) == 6
    result = classify.predict(texts)
    for row, mean, mi in zip(rows, result.mean, result.mutual_information, strict=True):
        assert row["label"] == ("NEG", "POS")[int(mean.argmax())]
        assert row["score"] == pytest.approx(float(mean.max()))
        assert row["mutual_information"] == pytest.approx(float(mi))
        assert 0.5 <= row["score"] <= 1.0 and row["mutual_information"] >= 0.0
    assert classify(texts) == rows  # same texts and seed, same numbers
    single = classify(texts[0])
    assert isinstance(single, dict) and single["label"] in ("NEG", "POS")
    # the pipeline's own single pass agrees with the MC mean within MC error
    plain = pipe(texts[0])[0]
    assert plain["label"] in ("NEG", "POS")
    flags = _flags(model)
    MCDropoutTextClassifier(model, tokenizer, n_samples=4)(texts)
    assert _flags(model) == flags


def test_wrapper_bad_input() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        MCDropoutTextClassifier(_model())
    with pytest.raises(TypeError, match="pipeline"):
        MCDropoutTextClassifier("bert-base-uncased")
    classify = MCDropoutTextClassifier(_model(), _tokenizer(), n_samples=2)
    with pytest.raises(TypeError, match="list of strings"):
        classify([1, 2])
    with pytest.raises(TypeError, match="datasets.Dataset or a DataLoader"):
        predict_with_uncertainty(_model(), torch.zeros(3, 4))


def test_every_helper_takes_the_cores_options_and_defaults():
    """One ``n_samples`` default everywhere (the core's), and options refused up front."""
    import inspect

    core = inspect.signature(mcdrop.predict_with_uncertainty).parameters["n_samples"].default
    assert core == 100
    for helper in (predict_with_uncertainty, evaluate, MCDropoutTrainerCallback):
        assert inspect.signature(helper).parameters["n_samples"].default == core
    assert inspect.signature(MCDropoutTextClassifier).parameters["n_samples"].default == core
    with pytest.raises(TypeError, match="unknown.*'samples'"):
        MCDropoutTrainerCallback(samples=3)
    with pytest.raises(ValueError, match="`strategy`"):
        MCDropoutTextClassifier(_model(), _tokenizer(), strategy="fastest")
