"""Why an attached layer was not measured (GP001): the reasons the probe reports instead of a silent "healthy"."""

from __future__ import annotations

from collections.abc import Mapping

from gradprobe.discovery import RecurrentSite
from gradprobe.findings import Finding
from gradprobe.recorders.capture import SiteCalls


def unmeasured_tracks(
    sites: list[RecurrentSite], measured: Mapping[str, object]
) -> list[tuple[RecurrentSite, list[str]]]:
    """Every site with tracks no deep step measured, with those tracks.

    A site inside a named module measured as a whole (a DropConnect wrapper
    named with ``cells=``) is measured through it.
    """
    wrappers = [s.name for s in sites if s.name and all(track in measured for track in s.tracks)]
    out = []
    for site in sites:
        if any(site.name.startswith(f"{wrapper}.") for wrapper in wrappers):
            continue
        missing = [track for track in site.tracks if track not in measured]
        if missing:
            out.append((site, missing))
    return out


def why_unmeasured(site: RecurrentSite, seen: SiteCalls, got_gradients: bool, every: int) -> str:
    """The reason a site was not measured, from how its hooks ran and whether its weights got gradients."""
    if site.kind == "scripted":
        return (
            "a TorchScript module takes no hooks: attach to the eager module (before torch.jit.script) "
            "or to its gradprobe.reference twin"
        )
    if seen.on_replicas:
        return (
            "it ran on nn.DataParallel replicas (several GPUs), whose weights are copies: use "
            "DistributedDataParallel (one process per GPU), or attach to the model on one device"
        )
    if not seen.calls and got_gradients:
        return (
            "its forward hooks never ran although its weights got gradients: something calls its .forward() "
            "directly, which bypasses hooks (a DropConnect wrapper such as AWD-LSTM's WeightDrop does); name "
            "the wrapper with cells=[...] to measure it as a whole, or call the module itself (self.module(*args))"
        )
    if not seen.calls:
        return "its forward hooks never ran: it was not called, or it runs inside a scripted or compiled parent"
    if not seen.with_gradients:
        return "it was only called with gradients disabled (torch.no_grad / inference_mode): no backward to measure"
    return f"it was not called on a deep step (every {every} steps), or those steps had non-finite values"


def rules_off_finding(layer: str, tracks: list[str], step: int, rules_error: str) -> Finding:
    """GP001 for a layer nothing judged because the rules were switched off after an error."""
    reason = f"the rules were switched off after an error ({rules_error}): nothing was judged"
    return Finding(
        "GP001",
        "not-measured",
        "warning",
        layer,
        step,
        f"{layer} was attached but not judged: {reason}",
        {"reason": reason, "tracks": tracks},
    )
