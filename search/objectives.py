"""What a search can optimize besides loss: the objectives of ``SearchConfig.objectives``.

All are lower-is-better numbers; a candidate's objectives are computed when its evaluation on a
tier is recorded and stored with it (``pareto`` table of the run store):

- ``loss``: the funnel's fitness on that tier (with a suite tier, the suite aggregate of the
  ratios to tuned AdamW); across tiers a later tier beats any fitness on an earlier one;
- ``memory``: optimizer state bytes per parameter element, computed from the program for the
  reference model of :mod:`optdisco.dsl.memory` (equal to what the exported optimizer allocates);
- ``cost``: bytes moved per parameter element by one step, estimated from the program
  (:mod:`optdisco.dsl.cost`; flops are recorded beside it as ``cost_flops``);
- ``quant``: the rise of held-out loss when the trained members' weights are quantized to int4
  after training (:mod:`optdisco.evaluate.quantize`): quantized loss ÷ full-precision loss at
  the best learning rate, medians over seeds; over a suite, the geometric mean of the tasks'
  ratios. The int8 ratio is recorded beside it as ``quant_int8``.
"""

from __future__ import annotations

import functools
import math

from optdisco.dsl import Program

NAMES = ("loss", "memory", "cost", "quant")
QUANT_FORMATS = ("int8", "int4")


def parse_objectives(value) -> tuple[str, ...]:
    """A tuple of objective names from a list or a comma-separated string; ``loss`` must be one
    of them (the funnel promotes on it)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    out = tuple(value)
    unknown = [v for v in out if v not in NAMES]
    if unknown:
        raise ValueError(f"objectives: unknown {unknown}; known: {list(NAMES)}")
    if "loss" not in out:
        raise ValueError("objectives: 'loss' must be one of them (the funnel promotes on it)")
    if len(set(out)) != len(out):
        raise ValueError(f"objectives: {list(out)} names one twice")
    return out


@functools.lru_cache(maxsize=4096)
def memory_of(text: str) -> float:
    from optdisco.dsl import parse
    from optdisco.dsl.memory import state_bytes

    return state_bytes(parse(text))


@functools.lru_cache(maxsize=4096)
def cost_of(text: str) -> tuple[float, float]:
    from optdisco.dsl import parse
    from optdisco.dsl.cost import step_cost

    c = step_cost(parse(text))
    return c.bytes_per_element, c.flops_per_element


def _quant_ratio(result: dict | None, fmt: str) -> float:
    """Quantized ÷ full-precision held-out loss from an evaluation's stored details (one task,
    or a suite's ``tasks``: geometric mean of the tasks' ratios); ``inf`` if missing."""
    if not isinstance(result, dict):
        return math.inf
    if "tasks" in result:
        logs = []
        for d in result["tasks"].values():
            r = _quant_ratio(d, fmt)
            if not (math.isfinite(r) and r > 0):
                return math.inf
            logs.append(math.log(r))
        return math.exp(sum(logs) / len(logs)) if logs else math.inf
    try:
        q = float(result["quantized"][fmt])
        f = float(result["fitness"])
    except (KeyError, TypeError, ValueError):
        return math.inf
    if not (math.isfinite(q) and math.isfinite(f) and f > 0):
        return math.inf
    return q / f


def compute(objectives: tuple[str, ...], program: Program | str, fitness: float, result: dict | None) -> dict:
    """The objective values (and their companions) of one evaluation: ``{"loss": …, …}``."""
    text = program if isinstance(program, str) else program.to_text()
    f = float(fitness) if fitness is not None else math.inf
    out: dict[str, float] = {"loss": f if not math.isnan(f) else math.inf}
    if "memory" in objectives:
        out["memory"] = memory_of(text)
    if "cost" in objectives:
        out["cost"], out["cost_flops"] = cost_of(text)
    if "quant" in objectives:
        out["quant"] = _quant_ratio(result, "int4")
        out["quant_int8"] = _quant_ratio(result, "int8")
    return out


def evaluator_options(objectives: tuple[str, ...]) -> dict:
    """What the product's evaluator must measure for these objectives."""
    return {"quantize": list(QUANT_FORMATS)} if "quant" in objectives else {}
