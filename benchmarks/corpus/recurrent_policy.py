"""A recurrent actor-critic (A2C) stepped one environment step at a time, in the manner of
pytorch-a2c-ppo-acktr: a ``GRUCell`` policy over 16 parallel environments, the hidden state multiplied by
the episode-done masks (``h = h * (1 - done)``) so that it restarts with each episode, rollouts of 16
steps with the state carried across them (detached), and one Adam step per rollout.

The environment is a memory task: a cue (left or right) is shown at an episode's first step, nothing for
the next 4-10 steps, then a go signal, where the action that matches the cue earns +1. The user knows the
policy must remember the cue for up to 11 steps and declares it (``dependency_length=11``).

Variants:
    healthy: GRUCell(3, 32), Adam 3e-3.
    forgetful (broken, GP101): the update gate's bias at -4: the cell rewrites its state at every step, the
        gradient horizon falls short of the declared need, and the cue is never learned.

    python benchmarks/corpus/recurrent_policy.py --variant healthy --steps 400
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "forgetful": "GP101"}
QUICK_STEPS = 250  # the test's reduced run
STEPS = 400
ENVS, ROLLOUT, HIDDEN, LONGEST = 16, 16, 32, 11


class CueEnvs:
    """16 episodes at a time: cue, 4-10 blank steps, go signal; +1 for the action that matches the cue."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.cue = torch.zeros(ENVS, dtype=torch.long)
        self.length = torch.zeros(ENVS, dtype=torch.long)
        self.t = torch.zeros(ENVS, dtype=torch.long)
        self._reset(torch.ones(ENVS, dtype=torch.bool))

    def _reset(self, which: Tensor) -> None:
        n = int(which.sum())
        self.cue[which] = torch.randint(2, (n,), generator=self.generator)
        self.length[which] = torch.randint(6, LONGEST + 2, (n,), generator=self.generator)
        self.t[which] = 0

    def observe(self) -> Tensor:
        obs = torch.zeros(ENVS, 3)
        first = self.t == 0
        obs[first, self.cue[first]] = 1.0
        obs[self.t == self.length - 1, 2] = 1.0
        return obs

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        go = self.t == self.length - 1
        reward = torch.where(go, (action == self.cue).float(), torch.zeros(ENVS))
        self.t += 1
        done = go
        self._reset(done)
        return reward, done.float()


class Policy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRUCell(3, HIDDEN)
        self.actor = nn.Linear(HIDDEN, 2)
        self.critic = nn.Linear(HIDDEN, 1)

    def forward(self, obs: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.gru(obs, h)
        return self.actor(h), self.critic(h).squeeze(-1), h


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 25) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(4)
    envs = CueEnvs(generator)
    policy = Policy()
    if variant == "forgetful":
        with torch.no_grad():
            policy.gru.bias_ih[HIDDEN : 2 * HIDDEN] = -4.0  # update gate z: h' = (1 - z) n + z h
            policy.gru.bias_hh[HIDDEN : 2 * HIDDEN] = 0.0
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    result = common.RunResult("recurrent_policy", variant, VARIANTS[variant])
    h = torch.zeros(ENVS, HIDDEN)
    gamma = 0.95
    with gradprobe.attach(policy, log=log, every=every, dependency_length=LONGEST, config={}, optimizer=opt) as probe:
        for _ in range(steps):
            h = h.detach()  # truncated: the state is carried into the next rollout, the graph is cut
            logps, values, rewards, masks, entropies = [], [], [], [], []
            for _ in range(ROLLOUT):
                logits, value, h = policy(envs.observe(), h)
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
                reward, done = envs.step(action)
                logps.append(dist.log_prob(action))
                entropies.append(dist.entropy())
                values.append(value)
                rewards.append(reward)
                masks.append(1.0 - done)
                h = h * (1.0 - done).unsqueeze(1)  # the episode ended: the next one starts from zeros
            with torch.no_grad():
                _, ret, _ = policy(envs.observe(), h)
            returns = []
            for reward, mask in zip(reversed(rewards), reversed(masks)):
                ret = reward + gamma * ret * mask
                returns.append(ret)
            returns = torch.stack(returns[::-1])
            value_t, logp_t = torch.stack(values), torch.stack(logps)
            advantage = returns - value_t
            loss = (
                -(advantage.detach() * logp_t).mean()
                + 0.5 * advantage.pow(2).mean()
                - 0.01 * torch.stack(entropies).mean()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            go = torch.stack(rewards).sum() / max(1.0, float(sum(1.0 - m for m in masks).sum()))
            result.losses.append(1.0 - float(go))  # the share of go signals answered wrongly
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
