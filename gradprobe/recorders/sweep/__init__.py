"""The deep step of a fused stack: one forward pass and one backward sweep per layer direction.

The general replay (:mod:`gradprobe.recorders.replay`) rebuilds a stack's
states with the reference step functions under autograd, back-propagates the
captured gradients through that graph (about ten autograd nodes per time step),
and then the propagation profile and the Lyapunov spectrum each walk the
sequence once more. For the common case, one call of a ``nn.RNN``/``nn.LSTM``/
``nn.GRU`` (or reference) stack on a padded batch, this module does the same
work in two passes with analytic products and no graph:

1. **forward**, bottom layer first: the input projection of all steps in one
   matrix product, then per step one recurrent product and the cell's
   elementwise math, keeping the activations and the states. The top layer's
   outputs are the call's own output, captured by the probe: there every
   ``h_{t-1}`` is known, so its pre-activations are two matrix products over
   all steps at once and only the LSTM cell state is a scan
   (:func:`forward_known`);
2. **backward**, top layer first: per step one vector-Jacobian product for a
   block of rows that holds at once
   - the batch's total ``dL/dh_t`` (the captured gradients of the output and
     of the final state injected where they enter, so the rows carry exactly
     what autograd would),
   - the propagation profile's random unit vectors (``profile[k]``), and
   - the Lyapunov vectors, re-orthonormalized by a QR step every few steps
     (:class:`_LyapunovPeriods`).

   The pre-activation cotangents of the gradient rows give, in one matrix
   product, the gradient that enters the layer below.

Every direction is processed in its own order of time (a reverse direction
runs from the last step to the first), and every result is returned in
chronological order.

A packed batch is swept padded, its rows sorted longest first: a row that has
ended (or, in a reverse direction, not yet started) carries its state, a step
with the identity Jacobian. The sweep's row block puts the profile and
Lyapunov rows (copies of rows alive at every step) before the batch, so the
rows that step at ``t`` are a prefix and only they are computed.

The Lyapunov spectrum is taken on the adjoint products ``J_t^T``: the singular
values of ``J_T ... J_1`` and of its transpose are the same, so the QR method
on either gives the same exponents (exactly for normal Jacobians, and in the
limit of long products in general).
"""

from gradprobe.recorders.sweep.backward import sweep
from gradprobe.recorders.sweep.cells import CellSweep, GRUSweep, LSTMSweep, RNNSweep, cell_sweep
from gradprobe.recorders.sweep.forward import forward, forward_known
from gradprobe.recorders.sweep.lyapunov import LyapunovPeriods
from gradprobe.recorders.sweep.run import CHUNK_STEPS, SWEEP_DTYPES, DirectionRun, SweepResult
from gradprobe.recorders.sweep.stack import MeasuredDirection, sample_stack, supported, sweep_stack

__all__ = [
    "CHUNK_STEPS",
    "SWEEP_DTYPES",
    "CellSweep",
    "DirectionRun",
    "GRUSweep",
    "LSTMSweep",
    "LyapunovPeriods",
    "MeasuredDirection",
    "RNNSweep",
    "SweepResult",
    "cell_sweep",
    "forward",
    "forward_known",
    "sample_stack",
    "supported",
    "sweep",
    "sweep_stack",
]
