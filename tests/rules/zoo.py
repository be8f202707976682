"""The test zoo: broken configurations, each with the rule that must catch it, and healthy ones."""

from __future__ import annotations

import torch
from torch import nn

import gradprobe
from gradprobe.fixes import reinit

BATCH = 16


def check(model, x, **kwargs):
    return gradprobe.check(model, x, config={}, **kwargs)


def codes(report, at_least="warning"):
    order = ["info", "warning", "error"]
    return {f.code for f in report.findings if order.index(f.severity) >= order.index(at_least)}


def healthy_lstm(hidden=32):
    lstm = nn.LSTM(4, hidden)
    reinit.orthogonal_recurrent_(lstm)
    reinit.forget_bias_(lstm, 1.0)
    return lstm


def default_tanh_rnn():
    return nn.RNN(1, 64)


def rnn_with_spectral_norm(value, hidden=64):
    rnn = nn.RNN(4, hidden)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(value / torch.linalg.matrix_norm(rnn.weight_hh_l0, ord=2))
    return rnn


def lstm_with_forget_bias(value, hidden=32):
    lstm = nn.LSTM(4, hidden)
    with torch.no_grad():
        lstm.bias_ih_l0[hidden : 2 * hidden] = value
        lstm.bias_hh_l0[hidden : 2 * hidden] = 0.0
    return lstm


def saturating_lstm(scale=40.0):
    lstm = nn.LSTM(4, 32)
    with torch.no_grad():
        lstm.weight_ih_l0.mul_(scale)
    return lstm


def relu_rnn_negative_bias():
    rnn = nn.RNN(4, 32, nonlinearity="relu")
    with torch.no_grad():
        rnn.bias_ih_l0.fill_(-2.0)
    return rnn
