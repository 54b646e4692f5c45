r"""Estimator identifiers: a strict grammar and an explicit registry.

``parse_estimator_id(id) -> (EstimatorClass, config)``; the estimator is then built as
``EstimatorClass(mc=..., iw=..., **config)``.  An id must match exactly one family's grammar
(:data:`REGISTRY`: full match, never a substring); numbers are parsed as numbers, never evaluated.
The family's class is looked up in :data:`ESTIMATOR_CLASSES`.

=========================================  ====================================================
grammar                                    family
=========================================  ====================================================
``reinforce``                              score function, no control variate
``reinforce-baseline``                     score function + neural baseline
``vimco-arithmetic|geometric``             VIMCO
``ovis-gamma{g}[-arithmetic|-geometric]``  OVIS~ (``g`` a decimal number >= 0)
``ovis-S{n}[-exclusive]``                  OVIS-MC, ``n`` integer >= 1: ``S = n``
``ovis-S{r}[-exclusive]``                  OVIS-MC, ``r`` decimal in (0, 1): ``S = max(1, floor(r*K))``
``wake-wake``, ``wake-sleep``              reweighted wake-sleep
``tvo[-part{n}][-beta{m}][-config1|2][-left|right|trapz]``   thermodynamic variational objective
``pathwise-vae``, ``pathwise-iwae``        reparameterised ELBO / IW bound
``stl``, ``dreg``                          sticking the landing, doubly reparameterised
``nvil``, ``muprop``, ``simple-muprop``, ``concrete``, ``gumbel-softmax``, ``straight-through``,
``rebar``, ``dynamic-rebar``, ``relax``, ``arm``, ``disarm``   the REBAR line (discrete latents)
``rebar-plain``, ``dynamic-rebar-plain``   REBAR with the relaxation sigma(z / tau) (not the paper's)
``hybrid-mixture``                         ELBO of a mixture-of-Gaussians q (score function + reparameterisation)
=========================================  ====================================================
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple, Type

from ovis.estimators.arm import ARM
from ovis.estimators.base import GradientEstimator
from ovis.estimators.hybrid_mixture import HybridMixtureELBO
from ovis.estimators.muprop import MuProp
from ovis.estimators.ovis import OvisAsymptotic, OvisMonteCarlo
from ovis.estimators.pathwise import DoublyReparameterised, PathwiseIWAE, PathwiseVAE, StickingTheLanding
from ovis.estimators.rebar import Rebar, Relax
from ovis.estimators.relaxed import Concrete, StraightThrough
from ovis.estimators.score_function import NVIL, Reinforce, ReinforceBaseline
from ovis.estimators.tvo import ThermodynamicVO
from ovis.estimators.vimco import Vimco
from ovis.estimators.wake_sleep import WakeSleep, WakeWake

__all__ = ["parse_estimator_id", "EstimatorFamily", "REGISTRY", "ESTIMATOR_CLASSES", "valid_forms",
           "suggest_estimator_ids"]

_DEC = r"(?:\d+(?:\.\d+)?|\.\d+)"  # a non-negative decimal number: 1, 0.5, 10.25, .5
_INT = r"[1-9]\d*"


@dataclass(frozen=True)
class EstimatorFamily:
    r"""One family of the grammar.

    Attributes:
        cls: the class that implements the family.
        form: the grammar, as documented.
        pattern: compiled full-match regular expression.
        build: maps the regex match to the constructor configuration.
    """

    cls: Type[GradientEstimator]
    form: str
    pattern: "re.Pattern[str]"
    build: Callable[["re.Match[str]"], Dict[str, Any]]

    @property
    def name(self) -> str:
        r"""The family name, ``cls.family`` (used in errors; the key of :data:`ESTIMATOR_CLASSES`)."""
        return self.cls.family


def _none(m: "re.Match[str]") -> Dict[str, Any]:
    return {}


def _vimco(m: "re.Match[str]") -> Dict[str, Any]:
    return {"mean": m.group("mean")}


def _ovis_gamma(m: "re.Match[str]") -> Dict[str, Any]:
    gamma = float(m.group("gamma"))
    return {"gamma": gamma, "loo": m.group("loo") or "exact"}


def _ovis_mc(m: "re.Match[str]") -> Dict[str, Any]:
    raw = m.group("s")
    exclusive = m.group("exclusive") is not None
    if re.fullmatch(_INT, raw):
        return {"n_aux": int(raw), "aux_fraction": None, "exclusive": exclusive}
    r = float(raw)
    if not 0.0 < r < 1.0:
        raise ValueError(
            f"ovis-S{raw}: a decimal S must lie strictly between 0 and 1 (a fraction of K); "
            "use an integer for a number of auxiliary particles (e.g. ovis-S10)"
        )
    return {"n_aux": None, "aux_fraction": r, "exclusive": exclusive}


def _tvo(m: "re.Match[str]") -> Dict[str, Any]:
    n = int(m.group("part")) if m.group("part") else 2
    beta = float(m.group("beta")) if m.group("beta") else 10.0
    return {
        "partitions": n,
        "log_beta_min": beta,
        "schedule": m.group("config") or "log",
        "integration": m.group("integration") or "left",
    }


def _family(cls: Type[GradientEstimator], form: str, regex: str,
            build: Callable[["re.Match[str]"], Dict[str, Any]] = _none) -> EstimatorFamily:
    return EstimatorFamily(cls, form, re.compile(regex), build)


#: the id grammar, one entry per family
REGISTRY: List[EstimatorFamily] = [
    _family(Reinforce, "reinforce", r"reinforce"),
    _family(ReinforceBaseline, "reinforce-baseline", r"reinforce-baseline"),
    _family(Vimco, "vimco-arithmetic | vimco-geometric", r"vimco-(?P<mean>arithmetic|geometric)", _vimco),
    _family(OvisAsymptotic, "ovis-gamma{g}[-arithmetic|-geometric]  (g >= 0, e.g. ovis-gamma1, ovis-gamma0.5)",
            rf"ovis-gamma(?P<gamma>{_DEC})(?:-(?P<loo>arithmetic|geometric))?", _ovis_gamma),
    _family(OvisMonteCarlo, "ovis-S{n}[-exclusive] (n integer >= 1) | ovis-S{r}[-exclusive] (0 < r < 1)",
            rf"ovis-S(?P<s>{_DEC})(?P<exclusive>-exclusive)?", _ovis_mc),
    _family(WakeWake, "wake-wake", r"wake-wake"),
    _family(WakeSleep, "wake-sleep", r"wake-sleep"),
    _family(ThermodynamicVO, "tvo[-part{n}][-beta{m}][-config1|-config2][-left|-right|-trapz]",
            rf"tvo(?:-part(?P<part>{_INT}))?(?:-beta(?P<beta>{_DEC}))?"
            r"(?:-(?P<config>config1|config2))?(?:-(?P<integration>left|right|trapz))?", _tvo),
    _family(PathwiseVAE, "pathwise-vae", r"pathwise-vae"),
    _family(PathwiseIWAE, "pathwise-iwae", r"pathwise-iwae"),
    _family(StickingTheLanding, "stl", r"stl"),
    _family(DoublyReparameterised, "dreg", r"dreg"),
    _family(NVIL, "nvil", r"nvil"),
    _family(MuProp, "muprop | simple-muprop", r"(?P<variant>simple-)?muprop",
            lambda m: {"simple": m.group("variant") is not None}),
    _family(Concrete, "concrete | gumbel-softmax", r"concrete|gumbel-softmax"),
    _family(StraightThrough, "straight-through", r"straight-through"),
    _family(Rebar, "rebar | dynamic-rebar | rebar-plain | dynamic-rebar-plain  (-plain: sigma(z / tau))",
            r"(?P<variant>dynamic-)?rebar(?P<plain>-plain)?",
            lambda m: {"dynamic": m.group("variant") is not None,
                       "relaxation": "plain" if m.group("plain") else "modified"}),
    _family(Relax, "relax", r"relax"),
    _family(ARM, "arm | disarm", r"(?P<variant>dis)?arm", lambda m: {"disarm": m.group("variant") is not None}),
    _family(HybridMixtureELBO, "hybrid-mixture", r"hybrid-mixture"),
]

#: family name -> the class that implements it (built as ``cls(mc=..., iw=..., **config)``)
ESTIMATOR_CLASSES: Dict[str, Type[GradientEstimator]] = {f.name: f.cls for f in REGISTRY}


def valid_forms() -> str:
    r"""The list of valid id forms, one per line (for error messages)."""
    return "\n".join(f"  {f.form}" for f in REGISTRY)


_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")

#: the ids the suggestions are drawn from: every fixed id, and the parameterised forms with ``{}``
#: for a number (filled with the numbers of the mistyped id, else with these defaults)
_SUGGESTION_FORMS: Tuple[str, ...] = (
    "reinforce", "reinforce-baseline", "vimco-arithmetic", "vimco-geometric",
    "ovis-gamma{}", "ovis-gamma{}-arithmetic", "ovis-gamma{}-geometric", "ovis-S{}", "ovis-S{}-exclusive",
    "wake-wake", "wake-sleep",
    *("tvo" + "".join(parts) for parts in itertools.product(
        ("", "-part{}"), ("", "-beta{}"), ("", "-config1", "-config2"), ("", "-left", "-right", "-trapz"))),
    "pathwise-vae", "pathwise-iwae", "stl", "dreg", "nvil", "muprop", "simple-muprop", "concrete",
    "gumbel-softmax", "straight-through", "rebar", "dynamic-rebar", "relax", "arm", "disarm", "hybrid-mixture",
)
_DEFAULT_NUMBERS = ("1", "10", "0.5")


def _valid(eid: str) -> bool:
    r"""Whether ``eid`` matches a family and its numbers build (no suggestion: no recursion)."""
    for f in REGISTRY:
        m = f.pattern.fullmatch(eid)
        if m is not None:
            try:
                f.build(m)
            except ValueError:
                return False
            return True
    return False


def _candidate_ids(numbers: Sequence[str]) -> List[str]:
    r"""Valid ids: :data:`_SUGGESTION_FORMS` with their ``{}`` filled by ``numbers`` (in order; the
    defaults when there are none), keeping those the grammar accepts."""
    fills = [list(numbers)] if numbers else [[d] * 2 for d in _DEFAULT_NUMBERS]
    out: Dict[str, None] = {}
    for form in _SUGGESTION_FORMS:
        for fill in fills:
            n = form.count("{}")
            eid = form.format(*(list(fill) + [fill[-1]] * n)[:n]) if n else form
            if _valid(eid):
                out[eid] = None
    return list(out)


def suggest_estimator_ids(text: str, n: int = 3) -> List[str]:
    r"""Up to ``n`` valid estimator ids near the mistyped ``text``, nearest first (``[]`` when none is
    near): the same id with ``_`` for ``-`` or other capitals; the ids of which ``text`` is a
    ``-``-separated part or a prefix (``iwae``: ``pathwise-iwae``; ``vimco``: ``vimco-arithmetic``,
    ``vimco-geometric``); then :func:`difflib.get_close_matches` (``ovis-gama1``: ``ovis-gamma1``).
    Parameterised forms are filled with the numbers of ``text`` (``ovis-gama0.5`` suggests
    ``ovis-gamma0.5``)."""
    if not isinstance(text, str) or not text.strip():
        return []
    norm = text.strip().lower().replace("_", "-").replace(" ", "-")
    candidates = _candidate_ids(_NUMBER.findall(norm))
    lower = {c.lower(): c for c in candidates}
    out: Dict[str, None] = {}
    if norm in lower:
        out[lower[norm]] = None
    parts = [c for c in candidates if norm in c.lower().split("-") or c.lower().startswith(norm + "-")]
    parts.sort(key=lambda c: (-difflib.SequenceMatcher(None, norm, c.lower()).ratio(), c))
    for c in parts:
        out[c] = None
    for c in difflib.get_close_matches(norm, list(lower), n=n, cutoff=0.6):
        out[lower[c]] = None
    return list(out)[:n]


def parse_estimator_id(estimator_id: str) -> Tuple[Type[GradientEstimator], Dict[str, Any]]:
    r"""Map an estimator id to ``(EstimatorClass, config)``.

    Raises:
        ValueError: the id is not a string or matches no family (the message suggests the nearest
            valid ids, :func:`suggest_estimator_ids`, then lists the valid forms), or a number in it
            is invalid (e.g. ``ovis-S1.5``).
    """
    if not isinstance(estimator_id, str):
        raise ValueError(f"an estimator id must be a string, got {estimator_id!r}")
    matches = [(f, f.pattern.fullmatch(estimator_id)) for f in REGISTRY]
    matches = [(f, m) for f, m in matches if m is not None]
    if not matches:
        near = suggest_estimator_ids(estimator_id)
        quoted = [repr(n) for n in near]
        hint = (f"; did you mean {', '.join(quoted[:-1]) + ' or ' if len(quoted) > 1 else ''}{quoted[-1]}?"
                if near else "")
        raise ValueError(f"unknown estimator id {estimator_id!r}{hint} valid forms:\n{valid_forms()}")
    if len(matches) > 1:  # pragma: no cover - the grammar is unambiguous, tested
        raise ValueError(f"ambiguous estimator id {estimator_id!r}: {[f.name for f, _ in matches]}")
    family, match = matches[0]
    return ESTIMATOR_CLASSES[family.name], family.build(match)
