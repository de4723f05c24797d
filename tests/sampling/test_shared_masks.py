"""``masks="shared"``: sample ``t`` is one network ``f_t`` for every example, batch, strategy, call.

Checked against closed forms (the covariance of two inputs under one network), against the model
itself (an example alone, in a batch, padded among longer ones, decoded step by step: the same
``f_t``), and against the training-mode reference for each example's marginal distribution.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import training_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from strategy_models import drawing_from_the_global_stream
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.results import load_result

from conftest import _mutual_information  # isort: skip

STRATEGIES = ["loop", "replicate", "vmap", "auto"]


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.4), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.2)
    )
    return nn.Sequential(model, nn.Linear(32, 3)).eval()


def _samples(model, inputs, **options):
    options = {"n_samples": 12, "seed": 7, "masks": "shared", "keep_samples": True, **options}
    return mcdrop.predict_with_uncertainty(model, inputs, **options).samples


@functools.cache
def _reference() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model, 9 inputs, and their 5 networks' outputs from one loop call."""
    model, x = _mlp(1), torch.randn(9, 6, generator=torch.Generator().manual_seed(5))
    return model, x, _samples(model, x, strategy="loop", n_samples=5)


# -- closed form -------------------------------------------------------------------------------------
class WeightedSum(nn.Module):
    def __init__(self, w: torch.Tensor, p: float) -> None:
        super().__init__()
        self.w = w
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.drop(x) * self.w).sum(-1, keepdim=True)


@pytest.mark.parametrize("strategy", ["replicate", "vmap"])  # the loop: the same networks
def test_covariance_of_two_inputs_under_one_network(strategy):
    """``y = w . dropout(x)``: Cov(y(x1), y(x2)) = p / (1 - p) * sum w_i^2 x1_i x2_i under one
    network; 0 when every example draws its own mask."""
    p, T = 0.3, 6000
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(12, generator=gen), torch.randn(2, 12, generator=gen)
    model = WeightedSum(w, p).eval()
    expected = p / (1 - p) * float((w**2 * x[0] * x[1]).sum())
    scale = p / (1 - p) * float((w**2 * x[0].abs() * x[1].abs()).sum())
    covariances = {}
    for masks in ("shared", "independent"):
        result = mcdrop.predict_with_uncertainty(
            model,
            x,
            task="regression",
            n_samples=T,
            seed=1,
            masks=masks,
            keep_samples=True,
            strategy=strategy,
        )
        y = result.samples[:, :, 0].double()
        covariances[masks] = float(torch.cov(y.T)[0, 1])
    # standard error of a covariance of T pairs: about the product of the two stds / sqrt(T)
    tol = 5 * scale / T**0.5
    assert abs(covariances["shared"] - expected) < tol
    assert abs(covariances["independent"]) < tol
    assert abs(expected) > 3 * tol  # the test can fail: the two modes are told apart


# -- one network whatever the batch, chunk, strategy, call ---------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_example_gets_the_same_networks_alone_and_in_any_batch(strategy):
    model = _mlp()
    x = torch.randn(64, 6)
    full = _samples(model, x, strategy=strategy)
    assert not torch.allclose(full[0], full[1])  # the samples differ
    alone = _samples(model, x[5:6], strategy=strategy)
    seven = _samples(model, x[:7], strategy=strategy, batch_size=3)  # chunked in 3 batches
    again = _samples(model, x, strategy=strategy, batch_budget=40)  # another pass size
    torch.testing.assert_close(alone[:, 0], full[:, 5])
    torch.testing.assert_close(seven, full[:, :7])
    torch.testing.assert_close(again, full)
    reference = _samples(model, x, strategy="loop")
    torch.testing.assert_close(full, reference)  # every strategy: the loop's networks


@given(st.permutations(list(range(9))), st.integers(1, 9), st.sampled_from(STRATEGIES))
@settings(max_examples=8, deadline=None)
def test_any_batch_composition_gives_each_example_its_networks(order, size, strategy):
    model, x, full = _reference()
    picked = torch.tensor(order[:size])
    got = _samples(model, x[picked], strategy=strategy, n_samples=5)
    torch.testing.assert_close(got, full[:, picked])


def test_two_calls_with_one_seed_are_the_same_networks_and_seeds_differ():
    model = _mlp()
    x = torch.randn(10, 6)
    a, b = _samples(model, x), _samples(model, x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, _samples(model, x, seed=8))
    # a later call on other inputs: the same networks (joint draws)
    torch.testing.assert_close(_samples(model, x[3:5]), a[:, 3:5])


def test_samples_of_one_network_are_a_deterministic_function():
    """Two copies of one input get the same output in every sample (one network), and the
    mutual information between them is that input's BALD score, not ~0."""
    model = _mlp()
    x = torch.randn(1, 6).repeat(2, 1)
    shared = _samples(model, x, n_samples=200)
    independent = _samples(model, x, n_samples=200, masks="independent")
    assert torch.equal(shared[:, 0], shared[:, 1])
    assert not torch.allclose(independent[:, 0], independent[:, 1])


class Gated(nn.Module):
    """The dropout runs only while its parent trains: the first chunk's check adds the parent
    to the sites, and the masks' layouts are found again for the new plan."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        if self.training:
            h = self.drop(h)
        return self.head(h)


def test_a_gated_dropout_found_by_the_first_chunk_shares_its_masks():
    torch.manual_seed(0)
    model = Gated().eval()
    x = torch.randn(7, 6)
    full = _samples(model, x)
    assert not torch.allclose(full[0], full[1])
    torch.testing.assert_close(_samples(model, x[3:4])[:, 0], full[:, 3])


def test_mcdropout_is_one_ensemble_across_calls():
    model = _mlp()
    x = torch.randn(9, 6)
    mc = mcdrop.MCDropout(model, n_samples=10, masks="shared")  # no seed: drawn once
    full = mc(x)
    torch.testing.assert_close(mc(x[4:6]), full[:, 4:6])
    seeded = mcdrop.MCDropout(model, n_samples=10, masks="shared", seed=7)
    probabilities = _samples(model, x, n_samples=10)
    torch.testing.assert_close(seeded(x).softmax(-1), probabilities)


def test_result_records_the_masks_and_keeps_them_in_a_file(tmp_path):
    model = _mlp()
    x = torch.randn(4, 6)
    shared = mcdrop.predict_with_uncertainty(model, x, n_samples=4, seed=0, masks="shared")
    independent = mcdrop.predict_with_uncertainty(model, x, n_samples=4, seed=0)
    assert shared.masks == "shared" and independent.masks == "independent"
    shared.save(tmp_path / "shared.npz")
    independent.save(tmp_path / "independent.npz")
    assert load_result(tmp_path / "shared.npz").masks == "shared"
    assert load_result(tmp_path / "independent.npz").masks == "independent"


# -- the caller's random stream ------------------------------------------------------------------------
def test_no_draw_from_the_global_generator_even_with_a_thread_drawing():
    model = _mlp()
    x = torch.randn(128, 6)
    state = torch.get_rng_state()
    reference = _samples(model, x, n_samples=40)
    assert torch.equal(state, torch.get_rng_state())  # neither read-and-restored nor advanced
    with drawing_from_the_global_stream() as draws:
        results = [_samples(model, x, n_samples=40, strategy=s) for s in STRATEGIES]
    assert len(draws) > 10
    for result in results:
        torch.testing.assert_close(result, reference, rtol=0, atol=1e-6)
    # the other thread's stream was not rewound: no draw repeats another
    assert len(torch.unique(torch.stack(draws), dim=0)) == len(draws)


# -- marginals against the training-mode reference ------------------------------------------------------
T = 200


def _assert_marginals(ours: torch.Tensor, reference_logits: torch.Tensor, class_dim: int) -> None:
    """Per-example means of the probabilities within Monte Carlo error of the reference's.

    Shared masks make the examples' errors correlated, so no average over examples is used:
    every element within 4.5 standard errors, and the probabilities' per-element variances (the
    epistemic part) within 35 % on average.
    """
    dim = class_dim + 1 if class_dim >= 0 else -1
    ours = ours.double()
    theirs = torch.softmax(reference_logits.double(), dim=dim)
    se = (ours.var(0) / len(ours) + theirs.var(0) / len(theirs)).sqrt().clamp_min(1e-6)
    z = (ours.mean(0) - theirs.mean(0)) / se
    assert z.abs().max() < 4.5, f"means differ: max |z| {z.abs().max():.2f}"
    varying = theirs.var(0) > 1e-4
    assert varying.any(), "the reference does not vary: the test could not fail"
    ratio = float(ours.var(0)[varying].mean() / theirs.var(0)[varying].mean())
    assert 0.65 < ratio < 1.35, f"variance ratio {ratio:.2f}"


def _assert_mutual_information(
    ours: torch.Tensor, reference_logits: torch.Tensor, class_dim: int
) -> None:
    """The mutual information averaged over examples within 4 bootstrap standard errors of the
    reference's. The bootstrap resamples whole samples (networks), so the dependence that
    shared masks give the examples of one sample is kept."""
    theirs = torch.softmax(reference_logits.double(), dim=class_dim + 1 if class_dim >= 0 else -1)
    gen = torch.Generator().manual_seed(0)

    def spread(samples: torch.Tensor) -> torch.Tensor:
        picks = [torch.randint(0, len(samples), (len(samples),), generator=gen) for _ in range(40)]
        return torch.stack([_mutual_information(samples[i], class_dim) for i in picks]).std()

    mi_ours, mi_theirs = (
        _mutual_information(ours, class_dim),
        _mutual_information(theirs, class_dim),
    )
    tol = 4 * (spread(ours.double()) ** 2 + spread(theirs) ** 2).sqrt()
    assert mi_theirs > 1e-3, "the reference has no epistemic uncertainty: the test could not fail"
    assert abs(mi_ours - mi_theirs) < tol, f"MI {mi_ours:.4f} vs {mi_theirs:.4f} (tol {tol:.4f})"


def _check_family(
    model, inputs, *, class_dim=1, transform=None, strategies=("auto",), mutual_information=False
):
    transform = transform or (lambda out: out)
    reference = training_reference(model, lambda m: transform(m(**inputs)), T)
    for strategy in strategies:
        samples = _samples(
            model,
            inputs,
            n_samples=T,
            class_dim=class_dim,
            output_transform=transform,
            strategy=strategy,
        )
        _assert_marginals(samples, reference, class_dim)
        if mutual_information:
            _assert_mutual_information(samples, reference, class_dim)


def test_marginals_mlp_and_cnn_with_channel_dropout():
    _check_family(_mlp(), {"input": torch.randn(6, 6)}, strategies=("replicate", "vmap"))
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Dropout2d(0.3), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    ).eval()
    with torch.no_grad():
        cnn[4].weight.mul_(4)
    _check_family(cnn, {"input": torch.randn(5, 3, 8, 8)}, strategies=("vmap",))


class Recurrent(nn.Module):
    def __init__(self, cls: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cls(6, 16, num_layers=3, dropout=0.4, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_marginals_rnn_inter_layer_dropout(cls):
    torch.manual_seed(0)
    model = Recurrent(cls).eval()
    with torch.no_grad():
        model.head.weight.mul_(25)
    _check_family(model, {"x": torch.randn(6, 5, 6)}, strategies=("replicate",))


@pytest.mark.parametrize("batch_first", [True, False])
def test_marginals_transformer_encoder(batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=batch_first)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.TransformerEncoder(layer, 2)  # nested-tensor fast path enabled
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.encoder(x if batch_first else x.transpose(0, 1))
            return self.head(h.mean(1 if batch_first else 0))

    model = Encoder().eval()
    with torch.no_grad():
        model.head.weight.mul_(6)
    _check_family(model, {"x": torch.randn(6, 5, 16)}, strategies=("vmap",))


# -- Hugging Face transformers --------------------------------------------------------------------------
tf = pytest.importorskip("transformers")


def _bert(impl: str) -> nn.Module:
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.2,
        num_labels=3,
        initializer_range=0.2,
    )
    config._attn_implementation = impl
    model = tf.BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(4)
    return model


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_marginals_tiny_bert(impl):
    ids = torch.randint(1, 50, (4, 7), generator=torch.Generator().manual_seed(0))
    _check_family(
        _bert(impl), {"input_ids": ids}, transform=lambda out: out.logits, strategies=("vmap",)
    )


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
def test_a_sentence_alone_and_padded_among_longer_ones(impl, strategy):
    model = _bert(impl)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (5, 9), generator=gen)
    mask = torch.ones_like(ids)
    ids[0, 4:], mask[0, 4:] = 0, 0  # the sentence has 4 tokens, the others 9
    alone = {"input_ids": ids[:1, :4], "attention_mask": mask[:1, :4]}
    padded = {"input_ids": ids, "attention_mask": mask}
    options = {"output_transform": lambda out: out.logits, "strategy": strategy}
    a, b = _samples(model, alone, **options), _samples(model, padded, **options)
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert a[:, 0].std(0).min() > 1e-3  # the samples vary: the test could fail


def test_step_by_step_decoding_is_the_full_forward():
    """Without a KV cache a causal LM decoded one token at a time applies, per sample, the same
    network as one forward over the whole sequence."""
    config = tf.LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.2,
        initializer_range=0.2,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config).eval()
    mc = mcdrop.MCDropout(
        model,
        n_samples=6,
        masks="shared",
        seed=3,
        class_dim=-1,
        output_transform=lambda o: o.logits,
    )
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(2))
    full = mc(input_ids=ids)
    for n in range(1, 7):
        torch.testing.assert_close(mc(input_ids=ids[:, :n])[:, :, -1], full[:, :, n - 1])


def test_step_by_step_seq2seq_decoding_is_the_full_forward():
    config = tf.BartConfig(
        vocab_size=32,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        dropout=0.1,
        attention_dropout=0.2,
        activation_dropout=0.1,
        init_std=0.2,
        max_position_embeddings=16,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = tf.BartForConditionalGeneration(config).eval()
    mc = mcdrop.MCDropout(
        model,
        n_samples=4,
        masks="shared",
        seed=3,
        class_dim=-1,
        output_transform=lambda o: o.logits,
    )
    gen = torch.Generator().manual_seed(2)
    source, target = torch.randint(3, 32, (2, 5), generator=gen), torch.randint(3, 32, (2, 5))
    full = mc(input_ids=source, decoder_input_ids=target)
    assert full.std(0).mean() > 1e-3
    for n in (1, 3, 5):
        step = mc(input_ids=source, decoder_input_ids=target[:, :n])
        torch.testing.assert_close(step[:, :, -1], full[:, :, n - 1])


def test_marginals_tiny_llama_per_token():
    config = tf.LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.2,
        initializer_range=0.2,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 32, (3, 5), generator=torch.Generator().manual_seed(0))
    _check_family(
        model,
        {"input_ids": ids},
        class_dim=-1,
        transform=lambda out: out.logits,
        strategies=("vmap",),
    )


def _scaled(head: nn.Linear, factor: float = 6.0) -> None:
    """Random-init heads are near-constant: scaled, so that a wrong answer can fail."""
    with torch.no_grad():
        head.weight.mul_(factor)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_marginals_tiny_bart(impl):
    config = tf.BartConfig(
        vocab_size=32,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        dropout=0.1,
        attention_dropout=0.2,
        activation_dropout=0.1,
        classifier_dropout=0.0,
        init_std=0.2,
        num_labels=3,
        max_position_embeddings=16,
    )
    config._attn_implementation = impl
    torch.manual_seed(0)
    model = tf.BartForSequenceClassification(config).eval()
    _scaled(model.classification_head.out_proj)
    ids = torch.randint(3, 32, (3, 6), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = config.eos_token_id
    _check_family(
        model,
        {"input_ids": ids},
        transform=lambda out: out.logits,
        strategies=("vmap",),
        mutual_information=True,
    )


@pytest.mark.slow
def test_marginals_tiny_t5_per_token():
    config = tf.T5Config(
        vocab_size=32,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        dropout_rate=0.2,
        initializer_factor=4.0,
    )
    torch.manual_seed(0)
    model = tf.T5ForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(0, 32, (3, 5), generator=gen),
        "decoder_input_ids": torch.randint(0, 32, (3, 4), generator=gen),
    }
    _check_family(
        model,
        inputs,
        class_dim=-1,
        transform=lambda out: out.logits,
        strategies=("vmap",),
        mutual_information=True,
    )


@pytest.mark.slow
def test_marginals_tiny_vit():
    config = tf.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        attention_probs_dropout_prob=0.2,
        hidden_dropout_prob=0.1,
        initializer_range=0.2,
        num_labels=3,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(config).eval()
    _scaled(model.classifier)
    pixels = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    _check_family(
        model,
        {"pixel_values": pixels},
        transform=lambda out: out.logits,
        strategies=("replicate",),
        mutual_information=True,
    )


@pytest.mark.slow
def test_marginals_tiny_clip_vision_classifier():
    vision = tf.CLIPVisionConfig(
        image_size=8,
        patch_size=4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        attention_dropout=0.2,
        initializer_factor=4.0,
    )
    config = tf.CLIPConfig(
        vision_config=vision.to_dict(),
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
        },
        num_labels=3,
    )
    config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = tf.CLIPForImageClassification(config).eval()
    _scaled(model.classifier)
    pixels = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    _check_family(
        model,
        {"pixel_values": pixels},
        transform=lambda out: out.logits,
        strategies=("vmap",),
        mutual_information=True,
    )


def test_a_compiled_model_runs_eagerly_with_the_same_networks():
    model = _mlp()
    x = torch.randn(5, 6)
    compiled = torch.compile(model, backend="eager")
    with pytest.warns(UserWarning, match="eagerly"):
        from_compiled = _samples(compiled, x)
    torch.testing.assert_close(from_compiled, _samples(model, x))
    with pytest.warns(UserWarning, match="eagerly"):
        torch.testing.assert_close(_samples(model, x, compile=True), from_compiled)


# -- refusals -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["Shared", "per_example", ""])
def test_bad_masks_value_names_the_option(bad):
    with pytest.raises(ValueError, match="`masks`"):
        mcdrop.predict_with_uncertainty(_mlp(), torch.randn(2, 6), masks=bad)
    with pytest.raises(ValueError, match="`masks`"):
        mcdrop.MCDropout(_mlp(), masks=bad)
    with pytest.raises(TypeError, match="`masks`"):
        mcdrop.predict_with_uncertainty(_mlp(), torch.randn(2, 6), masks=True)


class DropConnect(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.dropout(self.lin.weight, 0.3, self.training), self.lin.bias)


def test_dropconnect_is_one_network_per_sample_and_refuses_replicate():
    torch.manual_seed(0)
    model = DropConnect().eval()
    x = torch.randn(20, 6, dtype=torch.float64)
    model.double()
    samples = _samples(model, x, strategy="loop", task="regression")
    # each sample is x @ W_t.T + b for one masked weight W_t: solve for it from all examples
    kept_fraction = []
    for t in range(samples.shape[0]):
        fitted = torch.linalg.lstsq(x, samples[t] - model.lin.bias.detach()).solution.T
        kept = fitted.abs() > 1e-4
        expected = model.lin.weight.detach() / 0.7 * kept
        torch.testing.assert_close(fitted, expected, atol=1e-5, rtol=1e-5)
        kept_fraction.append(kept.double().mean())
    assert 0.4 < sum(kept_fraction) / len(kept_fraction) < 0.95
    torch.testing.assert_close(_samples(model, x, strategy="vmap", task="regression"), samples)
    with pytest.raises(ValueError, match="'replicate'"):
        _samples(model, x, strategy="replicate", task="regression")


class Tokens(nn.Module):
    """Dropout on ``(B * L, H)`` tokens: the batch dimension holds L units per example."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        flat = F.dropout(h.reshape(-1, 8), 0.3, self.training)
        return self.head(flat.reshape(h.shape).mean(1))


@pytest.mark.parametrize("first_two_equal", [False, True])
def test_folded_batch_dimension_found_even_when_the_first_examples_are_equal(first_two_equal):
    torch.manual_seed(0)
    x = torch.randn(5, 4, 3)
    if first_two_equal:  # the first pair's values cannot tell: a reversed companion does
        x[0] = x[0, :1]  # every token of the first example the same
        x[1] = x[0]
    model = Tokens().eval()
    full = _samples(model, x, strategy="replicate")
    assert not torch.allclose(full[0], full[1])
    torch.testing.assert_close(_samples(model, x[2:3], strategy="replicate")[:, 0], full[:, 2])


class Gram(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x @ x.T, 0.2, self.training).sum(1, keepdim=True)


class NoisyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(x)) + 0.1 * torch.randn_like(x[:, :3])


def test_refusals_name_the_site_and_the_way_out():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="`<model>`.*masks='independent'"):
        _samples(Gram().eval(), x, task="regression")  # no single dimension holds the examples
    with pytest.raises(ValueError, match="randn_like.*masks='independent'"):
        _samples(NoisyHead().eval(), x, task="regression")  # randomness beyond dropout
    scripted = torch.jit.script(_mlp())
    with pytest.raises(ValueError, match="TorchScript"):
        _samples(scripted, x)


# -- several input sets under the same networks ------------------------------------------------------
def test_sample_log_probs_are_joint_draws_of_the_same_networks():
    model = _mlp()
    pool, target = torch.randn(6, 6), torch.randn(3, 6)
    lp_pool, lp_target = mcdrop.sample_log_probs(model, [pool, target], n_samples=30, seed=4)
    assert lp_pool.shape == (30, 6, 3) and lp_target.shape == (30, 3, 3)
    together = _samples(model, torch.cat([pool, target]), n_samples=30, seed=4).double().log()
    torch.testing.assert_close(torch.cat([lp_pool, lp_target], 1), together)
    # a copy of a pool input in the target set shares all its information with it
    _, copy = mcdrop.sample_log_probs(model, [pool, pool[:1]], n_samples=30, seed=4)
    mi = mcdrop.stats.pairwise_mutual_information(torch.cat([lp_pool, copy], 1))
    assert float(mi[0, -1]) == pytest.approx(float(mi[0, 0]), rel=1e-6) and float(mi[0, 0]) > 0
    with pytest.raises(TypeError, match="list"):
        mcdrop.sample_log_probs(model, (pool, target))
    with pytest.raises(TypeError, match="masks"):
        mcdrop.sample_log_probs(model, [pool], masks="independent")


# -- layouts kept between calls ---------------------------------------------------------------------
class Flagged(nn.Module):
    """Dropout on ``(B, L, H)``, or with ``seq_first`` on ``(L, B, H)``: a flag moves the batch
    dimension (with ``L = 2`` the probe's two-example shapes are the same either way)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.drop = nn.Dropout(0.5)
        self.seq_first = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        if self.seq_first:
            return self.drop(h.transpose(0, 1)).transpose(0, 1).sum(-1)
        return self.drop(h).sum(-1)


class SeqFirstDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h.transpose(0, 1), self.p, self.training).transpose(0, 1)


def _learning_counted(monkeypatch) -> list[int]:
    from mcdrop.sampling import _shared

    count = [0]
    learned = _shared._learned

    def counted(*args):
        count[0] += 1
        return learned(*args)

    monkeypatch.setattr(_shared, "_learned", counted)
    return count


def _alone_is_in_pair(mc: mcdrop.MCDropout, x: torch.Tensor) -> bool:
    return torch.allclose(mc(x[1:2])[:, 0], mc(x[:2])[:, 1])


def test_layouts_are_kept_between_calls_and_learned_again_when_what_decided_them_changes(
    monkeypatch,
):
    count = _learning_counted(monkeypatch)
    torch.manual_seed(0)
    model = Flagged().eval()
    mc = mcdrop.MCDropout(model, n_samples=8, masks="shared", seed=3, strategy="loop")
    x = torch.randn(4, 3, 3)  # L = 3: the batch dimension (2 in the probe) has no other's size
    first = mc(x)
    assert count[0] == 1
    assert _alone_is_in_pair(mc, x)  # one example alone: another probe, learned once more
    assert count[0] == 2
    torch.testing.assert_close(mc(x), first)  # kept: no passes to learn them again
    assert _alone_is_in_pair(mc, x)
    predicted = _samples(model, x, n_samples=8, seed=3, strategy="loop", task="regression")
    torch.testing.assert_close(predicted, first)
    assert count[0] == 2  # predict_with_uncertainty found them too

    model.seq_first = True  # a flag: the batch dimension moves
    assert _alone_is_in_pair(mc, x)
    assert count[0] == 4
    x5 = torch.randn(4, 5, 3)  # another input length
    assert _alone_is_in_pair(mc, x5)
    assert count[0] == 6
    model.seq_first = False
    model.drop = SeqFirstDropout(0.5).eval()  # a site replaced
    assert _alone_is_in_pair(mc, x)
    assert count[0] == 8


_TRANSPOSE = {"on": False}


class GlobalFlagged(nn.Module):
    """A module-level flag (no key can see it) moves the batch dimension; with L = 2 beside the
    probe's two examples no shape changes either."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 2), nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        if _TRANSPOSE["on"]:
            return self.l2(F.dropout(h.T, 0.5, self.training).T)
        return self.l2(F.dropout(h, 0.5, self.training))


def test_layouts_whose_batch_dimension_shares_its_size_are_learned_every_call(monkeypatch):
    count = _learning_counted(monkeypatch)
    torch.manual_seed(0)
    model = GlobalFlagged().eval()
    mc = mcdrop.MCDropout(model, n_samples=8, masks="shared", seed=0, strategy="loop")
    x = torch.randn(2, 4)
    try:
        assert _alone_is_in_pair(mc, x)
        _TRANSPOSE["on"] = True
        assert _alone_is_in_pair(mc, x)
    finally:
        _TRANSPOSE["on"] = False
    assert count[0] == 4  # (2, 2) inputs: never kept


def test_a_stale_layout_would_break_one_network_per_sample(monkeypatch):
    """What the key guards against: the same layouts taken after the flag moved the batch
    dimension give an example other networks alone than in a batch (or a refusal)."""
    from mcdrop.sampling import _run

    monkeypatch.setattr(_run, "layouts_key", lambda *args: "always the same")
    torch.manual_seed(0)
    model = Flagged().eval()
    mc = mcdrop.MCDropout(model, n_samples=8, masks="shared", seed=3, strategy="loop")
    x = torch.randn(4, 4, 3)
    assert _alone_is_in_pair(mc, x)
    model.seq_first = True
    try:
        same = _alone_is_in_pair(mc, x)
    except ValueError:  # refused: the kept dimension does not hold the rows
        same = False
    assert not same


# -- hand-written dropout ---------------------------------------------------------------------------
class HandMask(nn.Module):
    """Dropout written by hand, as some research code does (a Bernoulli mask per unit)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return h
        if self.form == "bernoulli":
            mask = torch.bernoulli(torch.full_like(h, 0.7))
        else:
            mask = h.new_empty(h.shape).bernoulli_(0.7)
        return h * mask / 0.7


class HandWritten(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 16)
        self.noise = HandMask(form)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.noise(self.lin(x)))


@pytest.mark.parametrize("form", ["bernoulli", "bernoulli_"])
@pytest.mark.parametrize("how", ["found", "include"])
def test_hand_written_dropout_is_refused_naming_the_site(form, how):
    """Hand-written masks cannot be given one network per sample: shared mode refuses them
    with the module's name and the way out (independent mode samples them)."""
    torch.manual_seed(0)
    model = HandWritten(form).eval()
    x = torch.randn(5, 6)
    options = {"include": ["noise"]} if how == "include" else {}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"`noise`.*calls .*bernoulli.*masks='independent'"):
        _samples(model, x, **options)
    assert not any(m.training for m in model.modules())  # the model untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    independent = _samples(model, x, masks="independent", n_samples=50, **options)
    assert not torch.allclose(independent[0], independent[1])  # sampled there


def test_a_held_wrapper_keeps_its_plan_with_shared_masks():
    """The kept plan serves shared masks too: no new plan on a repeat call, the same networks
    (bit for bit a fresh wrapper's), one example alone the same network as in the batch; a rate
    changed between calls takes effect."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(6, 3, 8, 8)
    mc = mcdrop.MCDropout(model, n_samples=20, masks="shared", seed=1)
    first = mc(x)
    again = mc(x)
    assert mc._engine.plans_made == 1
    fresh = mcdrop.MCDropout(model, n_samples=20, masks="shared", seed=1)(x)
    assert torch.equal(first, again) and torch.equal(again, fresh)
    alone = mc(x[2:3])
    torch.testing.assert_close(alone[:, 0], first[:, 2])
    model[4].p = 0.2
    changed = mc(x)
    assert torch.equal(changed, mcdrop.MCDropout(model, n_samples=20, masks="shared", seed=1)(x))
    assert not torch.equal(changed, first)


def test_ambiguous_layouts_keep_no_plan():
    torch.manual_seed(0)
    mc = mcdrop.MCDropout(GlobalFlagged().eval(), n_samples=8, masks="shared", seed=0)
    x = torch.randn(2, 4)
    mc(x)
    mc(x)
    assert mc._engine.plans_made == 2
