"""Plots of a finished run, read from its events.jsonl (strategies never write files themselves)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from promptopt.runlog import load_run

RL_CURVES = "rl_curves.png"


def rl_curves(run_dir: str | Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, mean sampled reward) and (step, greedy prompt's dev score) from rlprompt's notes."""
    rewards, dev = [], []
    for e in load_run(Path(run_dir)).notes:
        if e.get("kind") == "rl.step" and "reward" in e:
            rewards.append((e["rl_step"], e["reward"]))
        elif e.get("kind") == "rl.eval" and e.get("dev_score") is not None:
            dev.append((e["rl_step"], e["dev_score"]))
    return rewards, dev


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt
    return plt


def plot_rl_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Save the reward (left axis) and dev score (right) by step; to rl_curves.png in the run dir by default."""
    plt = _pyplot()
    rewards, dev = rl_curves(run_dir)
    if not rewards and not dev:
        raise ValueError(f"{run_dir} has no RL training notes (was it an rlprompt run?)")
    fig, reward_ax = plt.subplots(figsize=(7, 4), layout="constrained")
    if rewards:
        reward_ax.plot(*zip(*rewards), color="tab:blue", alpha=0.8, label="mean sampled reward")
    reward_ax.set_xlabel("training step")
    reward_ax.set_ylabel("reward", color="tab:blue")
    dev_ax = reward_ax.twinx()
    if dev:
        dev_ax.plot(*zip(*dev), color="tab:red", marker="o", label="greedy prompt, dev")
    dev_ax.set_ylabel("dev score", color="tab:red")
    fig.legend(loc="outside right upper")  # beside the axes: it never hides a point
    out = Path(out) if out is not None else Path(run_dir) / RL_CURVES
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def dev_by_step_figure(scores: Sequence[tuple[int, float]], best: Sequence[tuple[int, float]]) -> Any:
    """Each candidate's dev score at the step it was proposed, and the best-so-far curve over them; the
    legend sits outside the axes, so it never hides a point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    if scores:
        ax.scatter(*zip(*scores), s=14, alpha=0.5, color="tab:blue", label="candidate")
    if best:
        ax.step(*zip(*best), where="post", color="tab:red", linewidth=2, label="best so far")
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel("dev score")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper")
    return fig


def plot_dev_by_step(scores: Sequence[tuple[int, float]], best: Sequence[tuple[int, float]], out: str | Path) -> Path:
    """Save dev_by_step_figure to `out`."""
    plt = _pyplot()
    fig = dev_by_step_figure(scores, best)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_front(points: Sequence[dict[str, Any]], x: str, y: str, chosen: str | None, out: str | Path) -> Path:
    """Save the finalists as y (task score) against x (e.g. prompt tokens), the Pareto front joined and the
    chosen prompt ringed; `points` are summary.json's objectives.points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    have = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    rest = [(p[x], p[y]) for p in have if not p.get("front")]
    front = sorted((p[x], p[y]) for p in have if p.get("front"))
    if rest:
        ax.scatter(*zip(*rest), s=24, alpha=0.6, color="tab:gray", label="dominated finalist")
    if front:
        ax.step(*zip(*front), where="post", color="tab:red", alpha=0.6)
        ax.scatter(*zip(*front), s=36, color="tab:red", label="Pareto front", zorder=3)
    pick = [(p[x], p[y]) for p in have if p["id"] == chosen]
    if pick:
        ax.scatter(*zip(*pick), s=160, facecolors="none", edgecolors="black", linewidths=1.5, label="chosen", zorder=4)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(f"{y} (dev)" if y == "task" else y)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
