"""optdisco.library — every documented optimizer as a verified program.

Each method is one ``.opt`` file in this folder. Its leading comment block is its header::

    # AdamW — Adam with decoupled weight decay
    # paper: Loshchilov & Hutter, "Decoupled Weight Decay Regularization"
    # year: 2019
    # link: https://arxiv.org/abs/1711.05101
    # reference: torch.optim.AdamW(lr, betas, eps, weight_decay)
    # notes: free text, may continue on further lines

``names()`` lists the methods, ``load(name)`` parses and checks one, ``index()`` gives their
metadata, with the state memory measured from the compiled program.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from optdisco.dsl import Program, parse_file

HERE = Path(__file__).resolve().parent
_FIELDS = ("paper", "year", "link", "reference", "notes")


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    paper: str
    year: str
    link: str
    reference: str
    notes: str
    path: Path


def names() -> list[str]:
    """Names of all library programs, sorted."""
    return sorted(p.stem for p in HERE.glob("*.opt"))


def path(name: str) -> Path:
    p = HERE / f"{name}.opt"
    if not p.is_file():
        import difflib

        close = difflib.get_close_matches(name, names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no library program named {name!r}{hint} (see optdisco library)")
    return p


@functools.lru_cache(maxsize=None)
def load(name: str) -> Program:
    """The library program ``name``, parsed and checked."""
    return parse_file(path(name))


def entry(name: str) -> Entry:
    doc = load(name).doc
    lines = doc.splitlines()
    title = lines[0].strip() if lines else name
    fields = {k: "" for k in _FIELDS}
    current = None
    for line in lines[1:]:
        key, sep, rest = line.partition(":")
        key = key.strip().lower()
        if sep and key in fields:
            current = key
            fields[key] = rest.strip()
        elif current and line.strip():
            fields[current] = (fields[current] + " " + line.strip()).strip()
    return Entry(name, title, fields["paper"], fields["year"], fields["link"], fields["reference"], fields["notes"], path(name))


@functools.lru_cache(maxsize=None)
def state_bytes(name: str, shape: tuple[int, ...] = (256, 256), role: str = "hidden") -> float:
    """Bytes of optimizer state per parameter element, measured by running two float32 steps
    of the compiled program on a parameter of ``shape`` (a hidden matrix by default)."""
    import torch

    from optdisco.dsl import compile_program

    program = load(name)
    fn = compile_program(program)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen)
    state = None
    for t in (1, 2):
        g = torch.randn(shape, generator=gen)
        hd = torch.randn(shape, generator=gen).abs() if fn.uses_hess_diag else None
        gp = (lambda x, g=g: g) if fn.uses_probe else None  # the gradient at the probe point
        w, state = fn(w, g, state, None, t, hess_diag=hd, role=role, g_probe=gp)
    total = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total / w.numel()


def index() -> list[dict]:
    """One row per method: name, title, paper, year, state bytes per element, reference."""
    rows = []
    for n in names():
        e = entry(n)
        rows.append(
            dict(name=n, title=e.title, paper=e.paper, year=e.year, state_bytes=state_bytes(n),
                 reference=e.reference, link=e.link)
        )
    return rows
