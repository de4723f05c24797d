"""Which dropout samples at test time, and the twin of the model that samples it.

Monte Carlo dropout needs every dropout that training applies to sample, and nothing else that
training mode changes. mcdrop defines the sites by training mode itself: a probe pass on two
examples runs a *twin* of the model (new module objects sharing the model's parameters, buffers
and hooks, see :mod:`mcdrop.dropout._twin`) in training mode as the model's own ``train()`` sets
it, with normalisation layers in eval, and records every dropout call it makes — ``F.dropout`` and its variants, the ``dropout_p`` of
``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``, the dropout of the RNN
kernels — with the innermost module that made it. That covers what a scan of ``nn.Dropout``
modules misses: attention dropout held in a float attribute (``dropout=0.0 if not self.training
else self.attention_dropout``), dropout children that are only read into a fused kernel, RNN
inter-layer dropout, functional ``F.dropout(x, p, self.training)``, hand-written dropout (a
``bernoulli_`` mask). Other random draws that training mode makes and sampling does not are
reported (a warning naming the module), unless they are known not to be dropout (stochastic
depth, layer drop, router noise).

The sampling twin then has exactly those modules in training mode and every other module in eval
mode: normalisation layers, stochastic depth / DropPath, layer drop and auxiliary heads stay off
unless ``include=`` or ``scope="train_except_norm"`` asks for them. A second recorded pass checks
that the sampling twin makes the same dropout calls (module, function, rate, count): when sampling
(:mod:`mcdrop._engine`), the first sampling chunk itself, recorded; otherwise a second probe. Where
the twin misses a call, because a parent's flag gates it (``if self.training: x = self.drop(x)``,
the fused fast path of ``nn.TransformerEncoderLayer``), the nearest gating parents are switched on
too, and a dropout that still cannot be reproduced is an error listing it.

With ``masks="shared"`` every dropout call of the sampling twin is answered by
:class:`mcdrop.dropout._masks.MaskedDropout`: sample ``t`` is one network ``f_t`` for every
example, its masks from a counter-based generator keyed by the seed, the sample, the site and
each element's coordinates within its example (fused attention and RNN kernels written out), and
nothing is drawn from PyTorch's global generators.

The user's model is never written to: not its flags, not its hooks. TorchScript models cannot be
twinned; for them mcdrop switches the model's own flags while it samples, under a per-model lock,
and warns.
"""

from __future__ import annotations

from mcdrop.dropout._flags import FlagReads, set_flag, watch_flags
from mcdrop.dropout._masks import (
    AMBIGUOUS,
    MASK_KINDS,
    Layout,
    MaskedDropout,
    PrivateRandom,
    infer_layouts,
    keep_mask,
    private_randomness,
)
from mcdrop.dropout._probe import (
    Culprit,
    NoDropout,
    NoLayerSkip,
    OutOfPlaceDropout,
    Recording,
    culprit,
    out_of_place,
    recording,
)
from mcdrop.dropout._sites import (
    GATING_TYPES,
    DropoutSite,
    ModuleFilter,
    Probe,
    Sampling,
    SamplingWrapper,
    Scope,
    check_filter,
    check_materialised,
    check_scope,
    check_sites,
    dropout_enabled,
    dropout_sites,
    sampling_twin,
    trained_modules,
    training_calls,
    training_flips,
    user_stacklevel,
)
from mcdrop.dropout._twin import CALL_HOOKS, SAMPLING_LOCK, modules_of, retwin, unwrap_compiled
from mcdrop.dropout._writes import ModelWriteError, guarding

__all__ = ["DropoutSite", "Scope", "dropout_enabled", "dropout_sites"]

# Not part of the public API; used by mcdrop.sampling.
__internal__ = [
    "Culprit",
    "GATING_TYPES",
    "MASK_KINDS",
    "SAMPLING_LOCK",
    "Layout",
    "AMBIGUOUS",
    "MaskedDropout",
    "ModuleFilter",
    "NoDropout",
    "NoLayerSkip",
    "OutOfPlaceDropout",
    "PrivateRandom",
    "Probe",
    "Recording",
    "Sampling",
    "SamplingWrapper",
    "check_filter",
    "check_materialised",
    "check_scope",
    "check_sites",
    "culprit",
    "infer_layouts",
    "keep_mask",
    "out_of_place",
    "private_randomness",
    "recording",
    "sampling_twin",
    "training_calls",
    "training_flips",
    "trained_modules",
    "retwin",
    "modules_of",
    "CALL_HOOKS",
    "FlagReads",
    "set_flag",
    "unwrap_compiled",
    "user_stacklevel",
    "watch_flags",
    "ModelWriteError",
    "guarding",
]
