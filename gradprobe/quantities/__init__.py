"""What the probe measures, one object per quantity (the shape of Cockpit's quantities).

Each quantity has its own job, says on which kind of step it runs and which
capture it needs (:class:`~gradprobe.quantities.base.Quantity`), and is built
from one :class:`~gradprobe.quantities.base.QuantitySetup`;
:mod:`gradprobe.quantities.registry` lists them. The
:class:`~gradprobe.probe.Probe` keeps the lifecycle (attach, step, close), the
schedule and the guard. A step goes:

1. :class:`~gradprobe.quantities.schedule.Schedule` chooses the step's capture
   mode (deep, sampled or off) before its forward pass (:class:`BudgetSchedule`
   for ``every="auto"``: intervals chosen from measured costs);
2. :class:`~gradprobe.quantities.step_statistics.StepStatistics` records the
   cheap figures of every step (loss, gradient norms per parameter and gate,
   where non-finite values appeared first); on a non-finite step only the
   quantities that say so compute;
3. the quantities that run in this mode compute from the step's frozen record:
   :class:`~gradprobe.quantities.saturation.SaturationSampling` on sampled
   steps, :class:`~gradprobe.quantities.deep_profile.DeepProfile` on deep steps;
   :class:`~gradprobe.quantities.sequence_profile.SequenceProfile` on deep steps
   for a module whose one call covers a whole sequence (measured through its inputs);
   :class:`~gradprobe.quantities.recurrence_spectra.RecurrenceSpectra` on deep
   steps for a diagonal linear recurrence an adapter reads (exact, from its decays);
   :class:`~gradprobe.quantities.truncation.TruncationWindows` on every step
   (the typical truncated-BPTT window of a loop that carries a detached state).
"""

from gradprobe.quantities.base import Emit, LayerProfile, Quantity, QuantitySetup, StepContext
from gradprobe.quantities.deep_profile import DeepProfile
from gradprobe.quantities.recurrence_spectra import RecurrenceSpectra
from gradprobe.quantities.saturation import SaturationSampling
from gradprobe.quantities.schedule import BudgetSchedule, Schedule
from gradprobe.quantities.sequence_profile import SequenceProfile
from gradprobe.quantities.step_statistics import StepStatistics
from gradprobe.quantities.truncation import TruncationWindows

__all__ = [
    "BudgetSchedule",
    "DeepProfile",
    "Emit",
    "LayerProfile",
    "Quantity",
    "QuantitySetup",
    "RecurrenceSpectra",
    "SaturationSampling",
    "Schedule",
    "SequenceProfile",
    "StepContext",
    "StepStatistics",
    "TruncationWindows",
]
