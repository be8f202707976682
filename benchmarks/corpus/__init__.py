"""A corpus of real training scripts, each healthy and with broken twins (see README, "Verdicts on real runs").

Every script is an ordinary training loop of a kind users write, wrapped with
``gradprobe.attach``; ``main(variant, steps)`` runs it and returns a
:class:`common.RunResult`. ``VARIANTS`` maps each variant to the rule code a
broken twin must raise at warning or above (``None``: healthy, no warning).
"""

SCRIPTS = (
    "word_lm",
    "char_lm",
    "bidir_classifier",
    "seq2seq",
    "timeseries_lbfgs",
    "lstm_proj",
    "residual_gru",
    "ln_lstm",
    "awd_lstm",
    "forecaster",
    "char_classifier",
    "recurrent_policy",
    "lru_recall",
    "mamba_lm",
)
