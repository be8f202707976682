"""What the probe measures: one module per quantity.

- :mod:`.gradients`: parameter-gradient norms (per gate) and non-finite values.
- :mod:`.saturation`: share of gate activations in their flat regions.
- :mod:`.capture`: forward hooks that keep what a deep probe needs.
- :mod:`.replay`: step-by-step replay of captured recurrent calls.
- :mod:`.propagation`: ``||dL/dh_t||``, the propagation profile, per-step
  Jacobian spectral norms, decay rate and gradient horizon.
"""
