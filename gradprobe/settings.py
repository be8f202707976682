"""The probe's measuring knobs (:class:`ProbeSettings`), checked when made; see :func:`gradprobe.attach`."""

from __future__ import annotations

from dataclasses import dataclass

#: What ``attach(fix=...)`` takes.
FIX_MODES = ("off", "recommend", "auto")


@dataclass
class ProbeSettings:
    """Knobs of the probe; see :func:`attach` for their meaning."""

    every: int | str = 50
    fix: str = "off"
    epsilon: float = 1e-3
    saturation_every: int = 20
    sample_rows: int = 4
    deep_rows: int = 4
    spectral_rows: int = 1
    spectral_steps: int = 10
    lyapunov_k: int = 4
    seed: int = 0
    flush_seconds: float = 2.0
    dependency_length: int | None = None
    truncation: int | None = None
    grad_clip: float | None = None
    budget: float = 0.03

    def __post_init__(self) -> None:
        if self.fix not in FIX_MODES:
            raise ValueError(f"fix must be one of {', '.join(FIX_MODES)}, got {self.fix!r}")
        if self.every != "auto" and (isinstance(self.every, (bool, str)) or int(self.every) < 1):
            raise ValueError(f"every must be a number of steps >= 1 or 'auto', got {self.every!r}")
        if isinstance(self.lyapunov_k, bool) or not isinstance(self.lyapunov_k, int) or self.lyapunov_k < 0:
            raise ValueError(f"lyapunov_k must be a number of exponents >= 0, got {self.lyapunov_k!r}")
        if not (isinstance(self.budget, (int, float)) and 0 < self.budget < 1):
            raise ValueError(f"budget must be a share of the step time in (0, 1), got {self.budget!r}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        for name in ("dependency_length", "truncation"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive number of steps, got {value!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a positive norm, got {self.grad_clip!r}")
