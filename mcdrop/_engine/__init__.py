"""The sampling engine, in parts that can be read and tested alone.

``options``
    :class:`SamplingOptions`: every keyword option, validated once, frozen.
``rng``
    Seeding that leaves the caller's random state as it was, and the process-wide lock that keeps
    seeded calls reproducible when several threads sample.
``strategies``
    How ``k`` stochastic passes of one batch run: ``loop``, ``replicate`` or ``vmap``, behind one
    :meth:`Runner.run`, and the 2-sample validity check of a strategy.
``planner``
    Plain arithmetic, no model: the ``auto`` rule (from the probe's profile, never a clock), rows
    per pass, memory sizing and the out-of-memory back-off.
``memory``
    CUDA rows per pass from quantities that are the same on every run of the same program: the
    card's capacity and one measured pass (never free memory, never the allocator's peak
    counter, which is the user's).
``driver``
    Batches -> chunks -> streaming statistics, with the NaN/Inf and "dropout changed nothing"
    checks in one place for every entry point.
"""
