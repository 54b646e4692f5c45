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

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple, Type

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

__all__ = ["parse_estimator_id", "EstimatorFamily", "REGISTRY", "ESTIMATOR_CLASSES", "valid_forms"]

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


def parse_estimator_id(estimator_id: str) -> Tuple[Type[GradientEstimator], Dict[str, Any]]:
    r"""Map an estimator id to ``(EstimatorClass, config)``.

    Raises:
        ValueError: the id is not a string or matches no family (the message lists the valid
            forms), or a number in it is invalid (e.g. ``ovis-S1.5``).
    """
    if not isinstance(estimator_id, str):
        raise ValueError(f"an estimator id must be a string, got {estimator_id!r}")
    matches = [(f, f.pattern.fullmatch(estimator_id)) for f in REGISTRY]
    matches = [(f, m) for f, m in matches if m is not None]
    if not matches:
        raise ValueError(f"unknown estimator id {estimator_id!r}; valid forms:\n{valid_forms()}")
    if len(matches) > 1:  # pragma: no cover - the grammar is unambiguous, tested
        raise ValueError(f"ambiguous estimator id {estimator_id!r}: {[f.name for f, _ in matches]}")
    family, match = matches[0]
    return ESTIMATOR_CLASSES[family.name], family.build(match)
