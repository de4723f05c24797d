"""Monte Carlo dropout agrees with a training-mode reference on models nobody here wrote.

Each model is built from a tiny config with random weights (nothing downloads) and a larger
initialisation scale, so its outputs vary enough for a wrong answer to fail the test. The
reference is a naive loop with the model in training mode and normalisation layers in eval
(:func:`conftest.training_reference`): when dropout is a model's only training-mode randomness,
mcdrop must agree with it within Monte Carlo error.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_matches_reference, training_reference
from torch import nn

import mcdrop

T = 200


def _check(model, inputs: dict, *, class_dim=1, transform=None, keep_eval=(), **options):
    transform = transform or (lambda out: out)
    reference = training_reference(model, lambda m: transform(m(**inputs)), T, keep_eval=keep_eval)
    result = mcdrop.predict_with_uncertainty(
        model,
        inputs,
        n_samples=T,
        class_dim=class_dim,
        output_transform=transform,
        keep_samples=True,
        seed=0,
        **options,
    )
    assert_matches_reference(result, reference, class_dim=class_dim)
    return result


def _flags(model):
    return {name: module.training for name, module in model.named_modules()}


# -- PyTorch modules --------------------------------------------------------------------------------
class Recurrent(nn.Module):
    def __init__(self, cls, *, head_dropout: float):
        super().__init__()
        self.rnn = cls(6, 16, num_layers=3, dropout=0.4, batch_first=True)
        self.drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(self.drop(out[:, -1]))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("head_dropout", [0.0, 0.2])
def test_rnn_inter_layer_dropout(cls, head_dropout):
    model = Recurrent(cls, head_dropout=head_dropout).eval()
    with torch.no_grad():
        model.head.weight.mul_(25)
    sites = {s.name: s for s in mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 5, 6))}
    assert sites["rnn"].rate == pytest.approx(0.4) and "torch." in sites["rnn"].reason
    _check(model, {"x": torch.randn(6, 5, 6)})


def test_transformer_encoder_on_its_fast_path():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2)  # nested-tensor fast path enabled
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(16 * 5, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_(4)
    sites = {s.name for s in mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 5, 16))}
    assert {"0.layers.0", "0.layers.0.self_attn", "0.layers.1.dropout1"} <= sites
    _check(model, {"input": torch.randn(6, 5, 16)})


def test_compiled_model_is_twinned_through_orig_mod():
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        net[3].weight.mul_(4)
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(5, 6)
    before = _flags(compiled)
    result = _check(net, {"input": x})  # the eager model: the reference
    from_compiled = mcdrop.predict_with_uncertainty(
        compiled, x, n_samples=T, keep_samples=True, seed=0
    )
    torch.testing.assert_close(from_compiled.mean, result.mean)
    assert _flags(compiled) == before and not compiled._forward_hooks
    assert torch.equal(compiled(x), net(x))  # still deterministic: eval untouched


class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        keep = x.new_empty(x.shape[0], 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class WithTrainingOnlyBehaviour(nn.Module):
    """Stochastic depth and an auxiliary head that changes the output type in training mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.drop_path = DropPath(0.5)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)
        self.aux = nn.Linear(16, 3)

    def forward(self, x):
        h = self.drop_path(torch.relu(self.body(x)))
        out = self.head(self.drop(h))
        return (out, self.aux(h)) if self.training else out


def test_training_only_behaviour_that_is_not_dropout_stays_off():
    model = WithTrainingOnlyBehaviour().eval()
    with torch.no_grad():
        model.head.weight.mul_(6)
    x = torch.randn(6, 6)
    assert [s.name for s in mcdrop.dropout_sites(model, example_inputs=x[:2])] == ["drop"]
    _check(
        model,
        {"x": x},
        transform=lambda out: out[0] if isinstance(out, tuple) else out,
        keep_eval=(model.drop_path,),
    )
    # opting in samples stochastic depth too
    both = mcdrop.dropout_sites(model, example_inputs=x[:2], include="drop_path")
    assert [s.name for s in both] == ["drop_path", "drop"]


# -- Hugging Face transformers ----------------------------------------------------------------------
tf = pytest.importorskip("transformers")


def _scale_head(head: nn.Module, factor: float = 4.0) -> None:
    with torch.no_grad():
        head.weight.mul_(factor)


@pytest.mark.parametrize("hidden", [0.0, 0.1])
def test_llama_attention_dropout_per_token(hidden):
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
    model = tf.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 32, (3, 5))
    if hidden:  # Llama has no hidden dropout: add a dropout before the LM head
        model.lm_head = nn.Sequential(nn.Dropout(hidden), model.lm_head)
    _check(model, {"input_ids": ids}, class_dim=-1, transform=lambda out: out.logits)


def _bart(impl: str, hidden: float):
    config = tf.BartConfig(
        vocab_size=32,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        dropout=hidden,
        attention_dropout=0.2,
        activation_dropout=0.0,
        classifier_dropout=0.0,
        init_std=0.2,
        num_labels=3,
        max_position_embeddings=16,
    )
    config._attn_implementation = impl
    return tf.BartForSequenceClassification(config).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("hidden", [0.0, 0.1])
def test_bart_attention_and_hidden_dropout(impl, hidden):
    model = _bart(impl, hidden)
    _scale_head(model.classification_head.out_proj)
    ids = torch.randint(3, 32, (4, 6))
    ids[:, -1] = model.config.eos_token_id
    _check(model, {"input_ids": ids}, transform=lambda out: out.logits)


@pytest.mark.parametrize("hidden", [False, True])
def test_t5_with_decoder_input_ids(hidden):
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
    model = tf.T5ForConditionalGeneration(config).eval()
    inputs = {
        "input_ids": torch.randint(0, 32, (3, 5)),
        "decoder_input_ids": torch.randint(0, 32, (3, 4)),
    }
    hidden_modules = [m for n, m in model.named_modules() if n.endswith("dropout")]
    exclude = None if hidden else "*dropout"  # attention dropout alone: the nn.Dropout modules off
    _check(
        model,
        inputs,
        class_dim=-1,
        transform=lambda out: out.logits,
        keep_eval=() if hidden else hidden_modules,
        exclude=exclude,
    )


@pytest.mark.parametrize("hidden", [0.0, 0.1])
def test_vit_eager_attention_dropout(hidden):
    config = tf.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        attention_probs_dropout_prob=0.2,
        hidden_dropout_prob=hidden,
        initializer_range=0.2,
        num_labels=3,
    )
    config._attn_implementation = "eager"
    model = tf.ViTForImageClassification(config).eval()
    _scale_head(model.classifier)
    _check(model, {"pixel_values": torch.randn(4, 3, 8, 8)}, transform=lambda out: out.logits)


def test_clip_vision_classifier_attention_dropout():
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
    config.vision_config._attn_implementation = "eager"
    model = tf.CLIPForImageClassification(config).eval()
    _scale_head(model.classifier)
    # the eval model raised "Found no dropout" before sites came from training mode
    _check(model, {"pixel_values": torch.randn(4, 3, 8, 8)}, transform=lambda out: out.logits)


class DropoutAndLayerDrop(nn.Module):
    """Calls F.dropout itself (so it is a site) and skips layers at random in training mode, as
    Hugging Face's BartEncoder does with ``encoder_layerdrop > 0``."""

    def __init__(self, layerdrop: float = 0.5):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 3)
        self.layerdrop = layerdrop

    def forward(self, x):
        x = nn.functional.dropout(x, 0.3, self.training)
        for layer in self.layers:
            if self.training and torch.rand([]) < self.layerdrop:
                continue
            x = torch.tanh(layer(x))
        return self.head(x)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
def test_layer_drop_stays_off_in_a_module_whose_dropout_samples(strategy):
    model = DropoutAndLayerDrop().eval()
    with torch.no_grad():
        model.head.weight.mul_(6)
    inputs = {"x": torch.randn(6, 8)}
    result = mcdrop.predict_with_uncertainty(
        model, inputs, n_samples=T, keep_samples=True, seed=0, strategy=strategy
    )
    model.layerdrop = 0.0  # the reference: training mode's dropout, no layer drop
    reference = training_reference(model, lambda m: m(**inputs), T)
    assert_matches_reference(result, reference)


def test_bart_layer_drop_stays_off():
    model = _bart("eager", 0.1)
    model.model.encoder.layerdrop = model.model.decoder.layerdrop = 0.5
    _scale_head(model.classification_head.out_proj)
    ids = torch.randint(3, 32, (4, 6))
    ids[:, -1] = model.config.eos_token_id
    inputs = {"input_ids": ids}
    result = mcdrop.predict_with_uncertainty(
        model, inputs, n_samples=T, keep_samples=True, seed=0, output_transform=lambda o: o.logits
    )
    model.model.encoder.layerdrop = model.model.decoder.layerdrop = 0.0
    reference = training_reference(model, lambda m: m(**inputs).logits, T)
    assert_matches_reference(result, reference)
