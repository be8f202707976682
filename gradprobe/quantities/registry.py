"""The quantities a probe measures, in the order they run on a step.

Adding a quantity: write its module (a :class:`~gradprobe.quantities.base.Quantity`
subclass whose constructor takes the :class:`~gradprobe.quantities.base.QuantitySetup`)
and add its class here. The probe builds every one at attach, captures each
step as deeply as the union of their :attr:`~gradprobe.quantities.base.Quantity.modes`
needs, and hands each the step's frozen record.
"""

from __future__ import annotations

from collections.abc import Callable

from gradprobe.quantities.base import Quantity, QuantitySetup
from gradprobe.quantities.deep_profile import DeepProfile
from gradprobe.quantities.recurrence_spectra import RecurrenceSpectra
from gradprobe.quantities.saturation import SaturationSampling
from gradprobe.quantities.sequence_profile import SequenceProfile
from gradprobe.quantities.step_statistics import StepStatistics
from gradprobe.quantities.truncation import TruncationWindows

#: Builds one quantity for an attached model.
QuantityFactory = Callable[[QuantitySetup], Quantity]

#: The built-in quantities, in the order they compute on a step.
BUILT_IN: tuple[QuantityFactory, ...] = (
    StepStatistics,  # first: whether the step had non-finite values decides whether the others compute
    SaturationSampling,
    DeepProfile,
    SequenceProfile,
    RecurrenceSpectra,
    TruncationWindows,
)


def build(setup: QuantitySetup, factories: tuple[QuantityFactory, ...] = BUILT_IN) -> list[Quantity]:
    """One instance of every quantity for the attached model."""
    return [factory(setup) for factory in factories]
