"""The shared-mask machinery on its own: the generator, the layouts, and each kind of dropout call.

Each kind of call answered by :class:`mcdrop.dropout.MaskedDropout` is checked against PyTorch's
own kernel in training mode (the same per-element distribution: means and variances within Monte
Carlo error, or closed forms), and the masks against what they must not depend on (the batch
around an example, a sequence's padded length).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sstats
from torch import nn
from torch.nn import functional as F

from mcdrop.dropout import Layout, MaskedDropout, PrivateRandom, infer_layouts
from mcdrop.dropout._masks import _RANDOM, hashes, infer_layout, mix, mix_int, threshold


def _run(masks: MaskedDropout, fn, t: torch.Tensor, rows: int):
    masks.start_pass(t, rows)
    with masks:
        return fn()


# -- the generator -----------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_tensor_hash_is_the_integer_hash(values):
    out = mix(torch.tensor(values, dtype=torch.int64))
    assert out.tolist() == [mix_int(v) for v in values]
    assert all(0 <= v < 2**32 for v in out.tolist())


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p(p):
    keep = hashes(12345, torch.arange(100), [40, 50]).ge(threshold(p))
    n = keep.numel()
    # binomial test: the fraction kept is 1 - p
    result = sstats.binomtest(int(keep.sum()), n, 1 - p)
    assert result.pvalue > 1e-4


def test_hashes_are_uniform_and_uncorrelated_across_coordinates():
    u = (hashes(7, torch.arange(64), [32, 32]).double() / 2**32).flatten()
    assert sstats.kstest(u.numpy(), "uniform").pvalue > 1e-4
    grid = u.reshape(64, 32, 32)
    for a, b in [(grid[:, :, 1:], grid[:, :, :-1]), (grid[1:], grid[:-1])]:
        r = sstats.pearsonr(a.flatten().numpy(), b.flatten().numpy())
        assert abs(r.statistic) < 5 / math.sqrt(a.numel())


def test_a_coordinate_keeps_its_hash_whatever_the_other_sizes():
    small = hashes(3, torch.arange(4), [5, 6])
    large = hashes(3, torch.arange(2, 9), [11, 6])
    assert torch.equal(small[2:], large[:2, :5])


# -- layouts -----------------------------------------------------------------------------------------
def test_infer_layout_batch_first_seq_first_folded_and_unbatched():
    a, b = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    assert infer_layout(a[:1], a) == Layout(0)
    assert infer_layout(a[:, :1], a[:, :2]) == Layout(1)
    # (B * L, H) with an example's L rows contiguous, and (L * B, H) with them strided
    contiguous = torch.cat([a[0], b[0]])
    strided = torch.stack([a[0], b[0]], 1).reshape(8, 3)
    assert infer_layout(a[0], contiguous) == Layout(0, major=True)
    assert infer_layout(a[0], strided) == Layout(0, major=False)
    weight = torch.randn(5, 5)
    assert infer_layout(weight, weight) == Layout(None)
    same = torch.ones(4, 3)
    assert isinstance(infer_layout(same, torch.cat([same, same])), str)  # values cannot tell
    assert isinstance(infer_layout(a[:1], torch.randn(3, 4, 3)), str)  # no dimension doubles
    layouts, unclear = infer_layouts({("m", "f", 0): a[:1]}, {("m", "f", 0): a})
    assert layouts == {("m", "f", 0): Layout(0)} and not unclear


# -- each kind of call against PyTorch's kernel --------------------------------------------------------
T = 4000
T_MODULE = 800  # where the reference is a loop of module calls


def _shared(label: str, dim: int | None = 0, *, major: bool = True) -> MaskedDropout:
    return MaskedDropout(11, {("", label, 0): Layout(dim, major)})


def _assert_same_distribution(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Per-element means within 5 standard errors, variances within 8 / sqrt(T) (relative)."""
    ours, theirs = ours.double(), theirs.double()
    se = (ours.var(0) / len(ours) + theirs.var(0) / len(theirs)).sqrt().clamp_min(1e-9)
    z = (ours.mean(0) - theirs.mean(0)) / se
    assert z.abs().max() < 5, f"means differ: max |z| {z.abs().max():.2f}"
    varying = theirs.var(0) > 1e-8
    ratio = ours.var(0)[varying] / theirs.var(0)[varying]
    tol = 8 / math.sqrt(min(len(ours), len(theirs)))
    assert ratio.min() > 1 - tol and ratio.max() < 1 + tol, (ratio.min(), ratio.max())


@pytest.mark.parametrize(
    ("fn", "label", "shape"),
    [
        (lambda x: F.dropout(x, 0.3), "torch.dropout", (2, 3, 4)),
        (lambda x: F.alpha_dropout(x, 0.3, True), "torch.alpha_dropout", (2, 3, 4)),
        (lambda x: F.dropout1d(x, 0.3), "torch.feature_dropout", (2, 3, 4)),
        (lambda x: F.dropout2d(x, 0.3), "torch.feature_dropout", (2, 3, 2, 2)),
        (lambda x: F.dropout3d(x, 0.3), "torch.feature_dropout", (2, 3, 2, 2, 1)),
        (lambda x: F.feature_alpha_dropout(x, 0.3, True), "torch.feature_alpha_dropout", (2, 3, 4)),
        (lambda x: nn.Dropout(0.3)(x.clone()), "torch.dropout", (2, 5)),
        (lambda x: F.dropout(x.clone(), 0.3, inplace=True), "torch.dropout_", (2, 5)),
    ],
)
def test_dropout_kinds_have_the_kernels_distribution(fn, label, shape):
    x = torch.randn(shape)
    masks = _shared(label)
    ours = _run(masks, lambda: fn(x.repeat(T, *[1] * (x.ndim - 1))), torch.arange(T), x.shape[0])
    ours = ours.reshape(T, *shape)
    theirs = torch.stack([fn(x) for _ in range(T)])
    _assert_same_distribution(ours, theirs)


def test_channel_dropout_drops_whole_channels_shared_across_examples():
    x = torch.rand(3, 4, 5, 5) + 0.5
    out = _run(_shared("torch.feature_dropout"), lambda: F.dropout2d(x, 0.5), torch.tensor([2]), 3)
    zero = out == 0
    per_channel = zero.flatten(2)
    assert (per_channel.all(-1) | (~per_channel).all(-1)).all()  # a channel is dropped whole
    assert (zero == zero[:1]).all() and zero.any() and (~zero).any()  # one mask for all examples


def test_closed_form_variance_of_a_weighted_sum():
    """``y = w . dropout(x)``: Var y = p / (1 - p) * sum w_i^2 x_i^2 for each example."""
    p, x, w = 0.3, torch.randn(2, 16).double(), torch.randn(16).double()
    y = _run(_shared("torch.dropout"), lambda: F.dropout(x.repeat(T, 1), p) @ w, torch.arange(T), 2)
    var = y.reshape(T, 2).var(0)
    expected = p / (1 - p) * (w**2 * x**2).sum(1)
    se = expected * math.sqrt(2 / (T - 1)) * 2  # kurtosis of a dropout sum: generous
    assert ((var - expected).abs() < 4 * se).all()


def test_masks_do_not_depend_on_batch_position_or_padded_length():
    masks = _shared("torch.dropout")
    x = torch.randn(5, 7, 6)
    t = torch.arange(3, 6)
    batch = _run(masks, lambda: F.dropout(x.repeat(3, 1, 1), 0.5), t, 5).reshape(3, 5, 7, 6)
    alone = _run(masks, lambda: F.dropout(x[2:3, :4].repeat(3, 1, 1), 0.5), t, 1)
    assert torch.equal(batch[:, 2, :4], alone)
    seq_first = MaskedDropout(11, {("", "torch.dropout", 0): Layout(1)})
    transposed = _run(seq_first, lambda: F.dropout(x[:, :4].transpose(0, 1), 0.5), t[:1], 5)
    assert torch.equal(transposed.transpose(0, 1), batch[0, :, :4])


def test_folded_batch_dimension_contiguous_and_strided():
    x = torch.randn(3, 4, 6)  # (B, L, H)
    t = torch.tensor([1])
    reference = _run(_shared("torch.dropout"), lambda: F.dropout(x, 0.5), t, 3)
    flat = _run(_shared("torch.dropout"), lambda: F.dropout(x.reshape(12, 6), 0.5), t, 3)
    strided = _run(
        _shared("torch.dropout", major=False),
        lambda: F.dropout(x.transpose(0, 1).reshape(12, 6), 0.5),
        t,
        3,
    )
    # the same units kept in all three (the chain of keys differs by one step: compare zeros)
    kept = flat.reshape(3, 4, 6) != 0
    assert (kept == kept[:1]).all()
    assert torch.equal(strided.reshape(4, 3, 6).transpose(0, 1) != 0, kept)
    assert (reference != 0).float().mean() == pytest.approx(0.5, abs=0.2)


def test_sdpa_written_out_has_the_kernels_distribution():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 8, generator=gen) for _ in range(3))
    bool_mask = torch.rand(2, 1, 4, 4, generator=gen) > 0.3
    bool_mask[..., 0] = True
    for kwargs in [{}, {"is_causal": True}, {"attn_mask": bool_mask}, {"scale": 0.4}]:
        masks = _shared("F.scaled_dot_product_attention")
        big = {
            key: val.repeat(T_MODULE, 1, 1, 1) if torch.is_tensor(val) else val
            for key, val in kwargs.items()
        }

        def attend(big=big):
            rep = [a.repeat(T_MODULE, 1, 1, 1) for a in (q, k, v)]
            return F.scaled_dot_product_attention(*rep, dropout_p=0.3, **big)

        ours = _run(masks, attend, torch.arange(T_MODULE), 2).reshape(T_MODULE, 2, 3, 4, 8)
        theirs = torch.stack(
            [
                F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, **kwargs)
                for _ in range(T_MODULE)
            ]
        )
        _assert_same_distribution(ours, theirs)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_has_the_modules_distribution(need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True).train()
    x = torch.randn(2, 4, 8)
    layout = Layout(0)
    inner = "torch.dropout" if need_weights else "F.scaled_dot_product_attention"
    masks = MaskedDropout(3, {("", inner, 0): layout})
    big = x.repeat(T_MODULE, 1, 1)
    with torch.no_grad():
        ours = _run(
            masks,
            lambda: mha(big, big, big, need_weights=need_weights)[0],
            torch.arange(T_MODULE),
            2,
        )
        theirs = torch.stack([mha(x, x, x, need_weights=need_weights)[0] for _ in range(T_MODULE)])
    _assert_same_distribution(ours.reshape(T_MODULE, 2, 4, 8), theirs)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("batch_first", [True, False])
def test_rnn_layer_by_layer_is_the_kernel(cls, batch_first):
    torch.manual_seed(0)
    rnn = cls(3, 8, num_layers=3, dropout=0.4, batch_first=batch_first, bidirectional=True)
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    masks = MaskedDropout(0, {})
    with torch.no_grad(), masks.probing():  # every inter-layer dropout the identity
        with masks:
            split = rnn.train()(x)
        whole = rnn.eval()(x)
    for a, b in zip(split, whole, strict=True):
        pairs = zip(
            a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True
        )
        for u, v in pairs:
            torch.testing.assert_close(u, v)


def test_rnn_inter_layer_masks_have_the_kernels_distribution():
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 8, num_layers=2, dropout=0.4).train()
    x = torch.randn(5, 2, 3)
    masks = MaskedDropout(0, {("", "torch.lstm", 0): Layout(1)})
    with torch.no_grad():
        ours = _run(masks, lambda: rnn(x.repeat(1, T_MODULE, 1))[0], torch.arange(T_MODULE), 2)
        theirs = torch.stack([rnn(x)[0] for _ in range(T_MODULE)])
    _assert_same_distribution(ours.reshape(5, T_MODULE, 2, 8).transpose(0, 1), theirs)


def test_packed_sequences_are_masked_by_time_step():
    rnn = nn.GRU(3, 8, num_layers=2, dropout=0.5).train()
    x = torch.randn(6, 2, 3)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4]))
    masks = MaskedDropout(0, {("", "torch.gru", 0): Layout(None)})
    with torch.no_grad():
        out, _ = _run(masks, lambda: rnn(packed), torch.tensor([1]), 2)
        alone = _run(masks, lambda: rnn(x[:4, 1:]), torch.tensor([1]), 1)[0]
    padded, _ = nn.utils.rnn.pad_packed_sequence(out)
    torch.testing.assert_close(padded[:4, 1], alone[:, 0])
    with pytest.raises(ValueError, match="'replicate'"):
        _run(masks, lambda: rnn(packed), torch.tensor([1, 2]), 2)


# -- no global generator -----------------------------------------------------------------------------
def test_private_random_never_touches_the_global_generator():
    state = torch.get_rng_state()
    x = torch.ones(4)
    with PrivateRandom(5):
        first = [torch.rand(3), torch.randn(3), x.clone().bernoulli_(0.5), torch.rand_like(x)]
    assert torch.equal(state, torch.get_rng_state())
    with PrivateRandom(5):
        again = [torch.rand(3), torch.randn(3), x.clone().bernoulli_(0.5), torch.rand_like(x)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_every_redirected_random_op_takes_a_generator():
    gen = torch.Generator()
    calls = {
        torch.rand: lambda f: f(2, generator=gen),
        torch.randn: lambda f: f(2, generator=gen),
        torch.randint: lambda f: f(0, 3, (2,), generator=gen),
        torch.randperm: lambda f: f(3, generator=gen),
        torch.bernoulli: lambda f: f(torch.full((2,), 0.5), generator=gen),
        torch.normal: lambda f: f(torch.zeros(2), torch.ones(2), generator=gen),
        torch.multinomial: lambda f: f(torch.ones(3), 2, generator=gen),
        torch.poisson: lambda f: f(torch.ones(2), generator=gen),
        torch.rand_like: lambda f: f(torch.ones(2), generator=gen),
        torch.randn_like: lambda f: f(torch.ones(2), generator=gen),
        torch.randint_like: lambda f: f(torch.ones(2), 3, generator=gen),
        torch.Tensor.bernoulli: lambda f: f(torch.full((2,), 0.5), generator=gen),
        torch.Tensor.multinomial: lambda f: f(torch.ones(3), 2, generator=gen),
        torch.Tensor.geometric_: lambda f: f(torch.ones(2), 0.5, generator=gen),
        torch.binomial: lambda f: f(torch.full((2,), 3.0), torch.full((2,), 0.5), generator=gen),
        torch.rrelu: lambda f: f(-torch.ones(2), 0.1, 0.3, True, generator=gen),
        torch.rrelu_: lambda f: f(-torch.ones(2), 0.1, 0.3, True, generator=gen),
    }
    state = torch.get_rng_state()
    for func in _RANDOM:
        call = calls.get(func, lambda f: f(torch.ones(2), generator=gen))
        call(func)
    assert torch.equal(state, torch.get_rng_state())


def test_shared_masks_refuse_other_randomness():
    masks = MaskedDropout(0, {})
    with pytest.raises(ValueError, match="masks='independent'"):
        _run(masks, lambda: torch.rand(3, 3), torch.tensor([0]), 1)


# -- independent masks at p = 0.5: one random bit a unit -----------------------------------------
def test_half_rate_units_are_the_bits_of_the_drawn_words():
    """At p = 0.5 a unit is one bit of a 64-bit draw (an eighth of the draws other rates take):
    unit ``64 w + 8 s + k`` of a row is bit ``s`` of byte ``k`` of the row's word ``w``, checked
    bit by bit against the words drawn from a generator in the same state (Python integers), and
    ``keep_mask`` is the same mask."""
    from mcdrop.dropout._masks import keep_mask, keep_units

    cpu = torch.device("cpu")
    shape = (3, 2, 70)  # two words a row, the second partly used
    keep = keep_units(shape, 0.5, cpu, torch.Generator().manual_seed(5))
    mask = keep_mask(shape, 0.5, cpu, torch.Generator().manual_seed(5))
    words = torch.randint(
        -(2**63), 2**63 - 1, (3, 2, 2), generator=torch.Generator().manual_seed(5)
    ).tolist()
    expected = [
        [
            [(words[a][b][u // 64] % 2**64 >> (8 * (u % 8) + (u % 64) // 8)) & 1 for u in range(70)]
            for b in range(2)
        ]
        for a in range(3)
    ]
    assert keep.dtype == torch.uint8 and keep.tolist() == expected
    assert torch.equal(mask, keep.bool())


def test_half_rate_units_are_fair_and_independent():
    """Each of a row's 128 positions is kept half the time (chi-squared over the positions), and
    units that share a byte (8 apart), a word (1 and 63 apart) or neither (64 apart, the next
    word) are independent (chi-squared tests of 2 x 2 tables, scipy)."""
    from mcdrop.dropout._masks import keep_units

    n = 20_000
    keep = keep_units((n, 128), 0.5, torch.device("cpu"), torch.Generator().manual_seed(0))
    kept = keep.sum(0).double()
    statistic = float(((kept - n / 2) ** 2 / (n / 4)).sum())
    assert sstats.chi2.sf(statistic, df=128) > 1e-4
    for lag in (1, 8, 63, 64):
        a, b = keep[:, : 128 - lag].flatten().long(), keep[:, lag:].flatten().long()
        table = torch.zeros(2, 2).index_put_((a, b), torch.ones(len(a)), accumulate=True)
        assert sstats.chi2_contingency(table.numpy()).pvalue > 1e-4, lag


@pytest.mark.parametrize("last", [1, 7, 63])
def test_half_rate_rows_shorter_than_a_word_take_a_byte_a_unit(last):
    """Rows of fewer than 64 units (feature dropout's ``(N, C, 1, 1)`` masks) would draw as many
    words with a bit a unit as with a byte a unit, and hold 8 bytes a unit: they take bytes,
    checked against the words drawn from a generator in the same state (byte >= 128 keeps)."""
    from mcdrop.dropout._masks import keep_mask, keep_units

    cpu, shape = torch.device("cpu"), (500, last)
    keep = keep_units(shape, 0.5, cpu, torch.Generator().manual_seed(2))
    words = torch.randint(
        -(2**63), 2**63 - 1, (500, (last + 7) // 8), generator=torch.Generator().manual_seed(2)
    )
    expected = words.view(torch.uint8)[:, :last] >= 128
    assert torch.equal(keep.bool(), expected)
    assert torch.equal(keep_mask(shape, 0.5, cpu, torch.Generator().manual_seed(2)), expected)
    assert keep.untyped_storage().nbytes() <= 8 * ((last + 7) // 8) * 500


@pytest.mark.parametrize("last", [64, 65, 130, 512])
def test_half_rate_masks_hold_at_most_two_bytes_a_unit(last):
    from mcdrop.dropout._masks import keep_units

    keep = keep_units((300, last), 0.5, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert keep.shape == (300, last)
    assert keep.untyped_storage().nbytes() <= 2 * keep.numel()
