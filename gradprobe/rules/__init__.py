"""Detectors, written as pluggy plugins (one module per rule family).

Codes: GP1xx gradient flow, GP2xx initialization, GP3xx activations,
GP4xx training setup. ``gradprobe rules`` prints the table.
"""
