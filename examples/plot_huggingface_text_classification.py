"""
MC dropout for Hugging Face text classifiers
============================================

:mod:`mcdrop.integrations.huggingface` runs Monte Carlo dropout on a ``datasets.Dataset``, evaluates a
``Trainer``'s model with ``T`` passes (instead of one pass with dropout left on), and wraps a
text-classification pipeline so that every text gets a label, its probability and the mutual
information. Only the dropout modules sample (BERT's attention dropout included); the model's
flags and weights are as before afterwards. Install with ``pip install "mcdrop[transformers]"``.

Nothing is downloaded: a tiny BERT is built from a config and trained for a few steps on
synthetic reviews, with a word-level tokenizer built in memory. The numbers printed are those
of this run.
"""

# %%
# A tiny tokenizer, model and data set
# ------------------------------------
import logging
import os
import sys
import tempfile
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import transformers
from datasets import Dataset, disable_progress_bars
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from mcdrop.integrations.huggingface import (
    MCDropoutTextClassifier,
    MCDropoutTrainerCallback,
    evaluate,
    predict_with_uncertainty,
)

QUICK = os.environ.get("MCDROP_EXAMPLE_QUICK") == "1"  # smaller run for the test suite
transformers.logging.set_verbosity_error()
logging.getLogger("datasets").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")
disable_progress_bars()
torch.manual_seed(0)
rng = np.random.default_rng(0)

POSITIVE, NEGATIVE = ["good", "great", "superb", "fine"], ["bad", "awful", "dull", "poor"]
FILLER = ["the", "movie", "plot", "actor", "was", "is", "very", "quite", "and"]
words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *POSITIVE, *NEGATIVE, *FILLER]
core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
core.pre_tokenizer = pre_tokenizers.Whitespace()
core.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
)
tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
    sep_token="[SEP]", model_max_length=32,
)  # fmt: skip


def review(label: int) -> str:
    sentiment = rng.choice(POSITIVE if label else NEGATIVE)
    filler = list(rng.choice(FILLER, size=int(rng.integers(2, 6))))
    filler.insert(int(rng.integers(0, len(filler) + 1)), str(sentiment))
    return " ".join(filler)


sentiment = rng.integers(0, 2, size=600)
texts = [review(int(v)) for v in sentiment]
flip = rng.uniform(size=600) < 0.1  # 10 % label noise: some errors to detect
labels = np.where(flip, 1 - sentiment, sentiment)
data = Dataset.from_dict({"text": texts, "label": labels})
data = data.map(lambda batch: tokenizer(batch["text"], truncation=True), batched=True)
data = data.remove_columns("text").train_test_split(test_size=200, seed=0)

config = transformers.BertConfig(
    vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=32, num_labels=2,
    id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
    hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1,
)  # fmt: skip
model = transformers.BertForSequenceClassification(config)

# %%
# Train with the Trainer; evaluate with ``T`` passes
# --------------------------------------------------
# The callback adds ``eval_mc_*`` metrics to every evaluation; :func:`evaluate` does the same
# on demand.
args = transformers.TrainingArguments(
    output_dir=tempfile.mkdtemp(),
    num_train_epochs=6 if QUICK else 12,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=100,
    learning_rate=2e-3,
    eval_strategy="epoch",
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
    save_strategy="no",
    logging_strategy="no",
)
n_samples = 20 if QUICK else 50
trainer = transformers.Trainer(
    model=model,
    args=args,
    train_dataset=data["train"],
    eval_dataset=data["test"],
    data_collator=transformers.DataCollatorWithPadding(tokenizer),
    callbacks=[MCDropoutTrainerCallback(n_samples=n_samples, seed=0)],
)
trainer.remove_callback(transformers.PrinterCallback)  # the numbers are printed below
trainer.train()
for entry in trainer.state.log_history:
    if "eval_mc_nll" in entry and entry["epoch"] % 3 == 0:
        print(f"epoch {entry['epoch']:.0f}: MC NLL {entry['eval_mc_nll']:.4f}, "
              f"ECE {entry['eval_mc_ece']:.4f}, accuracy {entry['eval_mc_accuracy']:.3f}")  # fmt: skip
single_pass = trainer.evaluate()
print(f"one deterministic pass: eval_loss (NLL) = {single_pass['eval_loss']:.4f}")
for key, value in evaluate(trainer, n_samples=n_samples, seed=0).items():
    print(f"{key:<33} {value:.4g}")

# the same on the dataset directly: labels become the targets, never a model input
result = predict_with_uncertainty(
    trainer.model, data["test"], tokenizer=tokenizer, n_samples=n_samples, seed=0
)
print("result on the dataset:", tuple(result.mean.shape), "targets:", tuple(result.targets.shape))

# %%
# A text-classification pipeline with uncertainty
# -----------------------------------------------
# Texts made only of filler words (no sentiment word) or with both kinds of words are
# ambiguous; the mutual information says how much the dropout masks disagree on them.
pipe = transformers.pipeline(
    "text-classification", model=trainer.model, tokenizer=tokenizer, device=-1
)
classify = MCDropoutTextClassifier(pipe, n_samples=n_samples, seed=0)
texts = [
    "the movie was very good",
    "the plot was awful",
    "the actor was superb and the plot dull",
    "the movie is quite",
    "great and poor",
    "the plot is fine",
]
rows = classify(texts)
for text, row in zip(texts, rows, strict=True):
    print(f"{text:<40} {row['label']:<9} p={row['score']:.3f}  MI={row['mutual_information']:.4f}")

fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
ax.barh(range(len(texts)), [row["mutual_information"] for row in rows], color="C1")
ax.set_yticks(range(len(texts)), texts)
ax.invert_yaxis()
ax.set(xlabel="mutual information (nats)", title="Epistemic uncertainty per text")


# %%
# Run as a script (``python examples/plot_huggingface_text_classification.py``), the example also saves its figures as
# ``plot_huggingface_text_classification_N.png`` in the working directory; the gallery shows them instead.
if __name__ == "__main__" and "sphinx_gallery" not in sys.modules:
    for number in plt.get_fignums():
        plt.figure(number).savefig(f"plot_huggingface_text_classification_{number}.png", dpi=120)
    print(f"saved {len(plt.get_fignums())} figure(s) as plot_huggingface_text_classification_N.png")
