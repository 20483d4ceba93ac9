"""Observation models: which likelihood links each observation type (DVID) to a model output.

A spec without ``[[observations]]`` has one observation model, made from its
``[residual]`` table, applied to the structural model's first output (``CP``)
-- the single-output behaviour, parameter names ``sigma_add`` / ``sigma_prop`` /
``sigma_exp``.  A spec with ``[[observations]]`` has one entry per observation
type::

    [[observations]]
    dvid = 1                  # rows with DVID = 1 (may be omitted with one entry)
    output = "CP"             # structural output it observes (contract 1)
    likelihood = "proportional"

    [[observations]]
    dvid = 2
    output = "EFFECT"
    likelihood = "additive"
    sigma_add = { dist = "halfnormal", sigma = 10.0 }

Likelihoods (``y`` = DV, ``f`` = the output at the record):

==============  ==============================================================  =========================
likelihood      density                                                         parameters
==============  ==============================================================  =========================
additive        ``y ~ Normal(f, sigma_add)``                                    sigma_add
proportional    ``y ~ Normal(f, sigma_prop f)``                                 sigma_prop
combined        ``y ~ Normal(f, sqrt(sigma_add^2 + (sigma_prop f)^2))``          sigma_add, sigma_prop
exponential     ``log y ~ Normal(log f, sigma_exp)``                            sigma_exp
bernoulli       ``P(y = 1) = expit(f)`` (f is the logit)                         --
ordinal         ``P(y <= k) = expit(c_k - f)``, y in 0..K-1 (proportional odds)  cutpoint_1..cutpoint_K-1
poisson         ``y ~ Poisson(exp(f))`` (``link = "identity"``: rate f)          --
negbin          ``y ~ NegBinomial(mean exp(f), Var = m + m^2 / phi)``            phi
tte             hazard ``h(t) = h0(t) exp(f(t))``; DV = 1 event, 0 censored      lambda (, shape)
==============  ==============================================================  =========================

Proportional error has SD 0 where the prediction is 0 (before a lag time, pre-dose):
an observed DV = 0 there has no usable density (unbounded as IPRED -> 0, NaN at
IPRED = 0), so such records are refused with a :class:`~bayesnlme.errors.DataError`
listing their rows (use ``combined``, or CENS = 1); a DV != 0 where IPRED = 0 has
log-density -inf (the sampler rejects the point), never NaN.  Exponential error
refuses DV <= 0.

Parameter names get the suffix ``_<output>`` when the spec has more than one
observation model (``sigma_add_CP``, ``sigma_add_EFFECT``).

Time-to-event data (NONMEM style): one ``EVID=0`` record per subject at the
event or censoring time ``TIME``, with ``DV = 1`` for an event and ``DV = 0``
for right censoring; subjects are at risk from time 0.  Baseline hazards
``h0``: exponential ``lambda``; Weibull ``lambda * shape * (lambda t)^(shape-1)``;
Gompertz ``lambda * exp(shape t)``.  The log-likelihood of a record is
``DV log h(T) - H(T)`` with ``H(T) = int_0^T h(s) ds``: exact when ``f`` does not
change with time (a constant linear predictor, an exposure column such as AUC),
and by Gauss--Legendre quadrature with ``nodes`` points (default 32) on
``[0, T]`` when the structural model's output varies in time (a concentration
from the PK model, see :func:`bayesnlme.structural.pd.pd_model`).  Quadrature
error is below 1e-6 relative for smooth exposure over a few half-lives and
grows where the interval contains many dose kinks (checked against
``scipy.integrate.quad`` in ``tests/test_outcomes.py``).

BLQ (continuous likelihoods): with a ``CENS`` column, ``blq = "m3"`` (default)
uses the censored likelihood ``P(Y <= DV)`` for ``CENS = 1`` (``P(LIMIT <= Y <=
DV)`` with a ``LIMIT``), ``P(Y >= DV)`` for ``CENS = -1``; ``blq = "m1"`` drops the
censored records (recorded in ``BuiltModel.excluded``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bayesnlme.errors import SpecError
from bayesnlme.spec.families import FAMILIES, LIKELIHOODS, NORMAL_KINDS, Family
from bayesnlme.spec.priors import Prior, check_keys

HAZARDS = ("exponential", "weibull", "gompertz")
BLQ_METHODS = ("m3", "m1")
_KEYS = ("dvid", "output", "likelihood", "sigma_add", "sigma_prop", "sigma_exp", "phi", "lambda",
         "shape", "cutpoints", "categories", "hazard", "blq", "link", "nodes")


def _default_priors():
    return {"sigma_add": Prior("halfnormal", {"sigma": 1.0}), "sigma_prop": Prior("halfnormal", {"sigma": 0.5}),
            "sigma_exp": Prior("halfnormal", {"sigma": 0.5}),
            # phi: NB2 dispersion (Var = m + m^2/phi); median 5, wide on the log scale
            "phi": Prior("lognormal", {"median": 5.0, "sigma": 1.5}),
            # lambda: baseline hazard rate (1/time); weakly informative over 4 orders of magnitude
            "lambda": Prior("lognormal", {"median": 0.01, "sigma": 2.0}),
            "shape_weibull": Prior("lognormal", {"median": 1.0, "sigma": 0.5}),
            "shape_gompertz": Prior("normal", {"mu": 0.0, "sigma": 0.1}),
            # cutpoints on the logit scale, ordered
            "cutpoints": Prior("normal", {"mu": 0.0, "sigma": 3.0})}


@dataclass(frozen=True)
class ObservationModel:
    """The likelihood of one observation type.

    Attributes
    ----------
    dvid : int or None
        Rows with this ``DVID`` (None: all rows; only for a single model).
    output : str
        Structural output observed (``"CP"``, ``"EFFECT"``, ``"RESPONSE"`` ...).
    likelihood : str
        One of :data:`LIKELIHOODS`.
    priors : dict of str -> Prior
        Priors of the model's own parameters, by base name (``sigma_add``, ``phi``,
        ``lambda``, ``shape``, ``cutpoints`` -- one prior for every cutpoint).
    categories : int
        Number of ordinal categories K (DV in 0..K-1).
    hazard : str
        Baseline hazard of a ``tte`` model.
    blq : {"m3", "m1"}
        Handling of censored (CENS != 0) records.
    link : {"log", "identity"}
        Link of count models.
    nodes : int
        Gauss--Legendre nodes of a time-varying cumulative hazard.
    suffix : str
        ``""`` or ``"_<output>"``, appended to the parameter names.
    """
    output: str = "CP"
    likelihood: str = "combined"
    priors: dict = field(default_factory=dict)
    dvid: int | None = None
    categories: int = 0
    hazard: str = "exponential"
    blq: str = "m3"
    link: str = "log"
    nodes: int = 32
    suffix: str = ""

    @property
    def family(self) -> Family:
        """The likelihood family object (:mod:`bayesnlme.spec.families`): density, draw, checks, VPC, text."""
        return FAMILIES[self.likelihood]

    def base_names(self) -> tuple[str, ...]:
        """Parameter base names of this likelihood (vector ``cutpoints`` counts once)."""
        return self.family.base_names(self)

    def parameter_names(self) -> list[str]:
        """Names reported in the summary (``cutpoint_<k>`` for ordinal models)."""
        names = []
        for b in self.base_names():
            if b == "cutpoints":
                names += [f"cutpoint_{k}{self.suffix}" for k in range(1, self.categories)]
            elif not self.priors[b].is_fixed:   # fixed values are not reported as estimates
                names.append(b + self.suffix)
        return names

    @property
    def is_normal(self) -> bool:
        return self.family.continuous

    def draw(self, f: np.ndarray, sd: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
        """Random DV of this model's records: the numpy side of its log-density.

        Parameters
        ----------
        f, sd : numpy.ndarray, shape (n_draws, n_records)
            Model output at the records (the prediction; the logit, linear predictor or log
            rate for non-continuous families) and residual SD (1 for non-continuous families).
        params : dict of str -> numpy.ndarray
            The family's own parameters by base name, leading dimension n_draws: ``phi``
            (n_draws,), ``cutpoints`` (n_draws, categories - 1).
        rng : numpy.random.Generator

        Returns
        -------
        numpy.ndarray, shape (n_draws, n_records)
            Continuous: ``f + sd eps`` (``f exp(sd eps)`` for exponential error), the uncensored
            value also for censored records; bernoulli 0/1 with probability ``expit(f)``; ordinal
            category k with ``P(Y <= k) = expit(c_k - f)``; Poisson with mean ``exp(f)`` (identity
            link: ``f``); negative binomial as a gamma--Poisson mixture; time to event: NaN (the
            event time is simulated over the hazard, :mod:`bayesnlme.evaluate.event_times`).
        """
        return self.family.draw(self, f, sd, params, rng)

    def to_dict(self) -> dict:
        d = {"output": self.output, "likelihood": self.likelihood,
             **{k: v.to_dict() for k, v in self.priors.items()}}
        if self.dvid is not None:
            d["dvid"] = self.dvid
        if self.likelihood == "ordinal":
            d["categories"] = self.categories
        if self.likelihood == "tte":
            d["hazard"], d["nodes"] = self.hazard, self.nodes
        if self.likelihood in ("poisson", "negbin"):
            d["link"] = self.link
        if self.blq != "m3":
            d["blq"] = self.blq
        return d


def observation_from_dict(d, where: str) -> ObservationModel:
    """Parse one ``[[observations]]`` table (priors default as documented in :func:`_default_priors`)."""
    check_keys(d, _KEYS, where)
    lik = d.get("likelihood", "combined")
    if lik not in LIKELIHOODS:
        raise SpecError(f"{where}: unknown likelihood {lik!r}; known: {', '.join(LIKELIHOODS)}")
    dvid = d.get("dvid")
    if dvid is not None and (isinstance(dvid, bool) or not isinstance(dvid, int)):
        raise SpecError(f"{where}: dvid must be a whole number, got {dvid!r}")
    hazard = d.get("hazard", "exponential")
    if hazard not in HAZARDS:
        raise SpecError(f"{where}: unknown hazard {hazard!r}; known: {', '.join(HAZARDS)}")
    blq, link = d.get("blq", "m3"), d.get("link", "log")
    if blq not in BLQ_METHODS:
        raise SpecError(f"{where}: blq must be \"m3\" (censored likelihood) or \"m1\" (drop), got {blq!r}")
    if link not in ("log", "identity"):
        raise SpecError(f"{where}: link must be \"log\" or \"identity\", got {link!r}")
    cats = d.get("categories", 0)
    if lik == "ordinal" and (isinstance(cats, bool) or not isinstance(cats, int) or cats < 2):
        raise SpecError(f"{where}: an ordinal likelihood needs categories = K >= 2 (DV in 0..K-1), got {cats!r}")
    nodes = d.get("nodes", 32)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 2 <= nodes <= 200:
        raise SpecError(f"{where}: nodes must be a whole number in 2..200, got {nodes!r}")
    om = ObservationModel(output=str(d.get("output", "CP")), likelihood=lik, dvid=dvid, categories=cats,
                          hazard=hazard, blq=blq, link=link, nodes=nodes)
    defaults = _default_priors()
    priors = {}
    for b in om.base_names():
        key = f"shape_{hazard}" if b == "shape" else b
        priors[b] = Prior.from_dict(d[b], f"{where}, {b}") if b in d else defaults[key]
        if b != "cutpoints" and not (b == "shape" and hazard == "gompertz") and priors[b].support[0] < 0:
            raise SpecError(f"{where}, {b}: impossible prior: {b} must be positive, but "
                            f"{priors[b].dist} allows negative values")
    unused = [k for k in ("sigma_add", "sigma_prop", "sigma_exp", "phi", "lambda", "shape", "cutpoints")
              if k in d and k not in priors]
    if unused:
        raise SpecError(f"{where}: {', '.join(unused)} given but likelihood {lik} uses "
                        f"{', '.join(om.base_names()) or 'no parameters of its own'}")
    return ObservationModel(**{**om.__dict__, "priors": priors})


def resolve(observations: tuple, residual, structural) -> tuple[ObservationModel, ...]:
    """The spec's observation models (the ``[residual]`` one when none are given), suffixes set.

    Raises
    ------
    SpecError
        Unknown output, repeated or missing DVID.
    """
    if not observations:
        return (ObservationModel(output=structural.outputs[0], likelihood=residual.kind,
                                 priors=dict(residual.priors), blq=getattr(residual, "blq", "m3")),)
    multi = len(observations) > 1
    outs = [o.output for o in observations]
    out = []
    for o in observations:
        if o.output not in structural.outputs:
            raise SpecError(f"observations: output {o.output!r} is not an output of structural model "
                            f"{structural.name} (outputs: {', '.join(structural.outputs)})")
        if multi and o.dvid is None:
            raise SpecError(f"observations: with several observation models each needs a dvid "
                            f"(output {o.output} has none)")
        suffix = ""
        if multi:
            suffix = f"_{o.output}" if outs.count(o.output) == 1 else f"_{o.output}{o.dvid}"
        out.append(ObservationModel(**{**o.__dict__, "suffix": suffix}))
    dvids = [o.dvid for o in out]
    if len(set(dvids)) != len(dvids):
        raise SpecError(f"observations: DVID values must be unique, got {dvids}")
    return tuple(out)


def check_data(models: tuple, data) -> None:
    """Data-side checks: DVIDs known, DV in range for discrete likelihoods, CENS only where it means something.

    Raises
    ------
    DataError
        Naming the record and column.
    """
    dvid = data.obs_dvid
    multi = len(models) > 1 or models[0].dvid is not None
    if multi and dvid is None:
        raise data.error("the spec has observation models by DVID but the data have no DVID column",
                         column="DVID")
    known = [m.dvid for m in models]
    for i, m in enumerate(models):
        sel = np.ones(data.n_obs, bool) if not multi else dvid == m.dvid
        y = data.obs_dv[sel]
        rows = data.obs_row[sel]
        bad, msg = m.family.dv_error(m, y) or (None, "")
        if m.family.continuous and m.family.positive:
            check_positive_dv(m, data, y, rows, sel)
        if bad is not None and bad.any():
            raise data.error(f"{msg}, got {y[bad][0]:g}", row=int(rows[bad][0]), column="DV")
        if data.obs_cens is not None and not m.is_normal and (data.obs_cens[sel] != 0).any():
            j = int(np.flatnonzero(data.obs_cens[sel] != 0)[0])
            raise data.error(f"CENS != 0 on a {m.likelihood} observation: censoring (BLQ) applies to "
                             f"continuous likelihoods only", row=int(rows[j]), column="CENS")
    if multi:
        unknown = ~np.isin(dvid, known)
        if unknown.any():
            j = int(np.flatnonzero(unknown)[0])
            raise data.error(f"DVID {dvid[j]} has no observation model (the spec's DVIDs: {known})",
                             row=int(data.obs_row[j]), column="DVID")


def check_positive_dv(m: ObservationModel, data, y, rows, sel) -> None:
    """Proportional error needs DV != 0 and exponential error DV > 0 on observed (uncensored) records.

    Why: with ``SD = sigma_prop * IPRED`` a DV of exactly 0 has a density that
    grows without bound as IPRED -> 0 (and is 0/0 = NaN at IPRED = 0, e.g.
    before a lag time), so the likelihood has no maximum; ``log DV`` does not
    exist for DV <= 0.  NONMEM users switch to a combined error model.
    """
    cens = data.obs_cens[sel] if data.obs_cens is not None else np.zeros(len(y), int)
    bad = (cens == 0) & ((y == 0) if m.likelihood == "proportional" else (y <= 0))
    if not bad.any():
        return
    listed = ", ".join(str(int(r)) for r in rows[bad][:10]) + (", ..." if bad.sum() > 10 else "")
    what = "DV = 0" if m.likelihood == "proportional" else "DV <= 0"
    why = ("its density is unbounded as the prediction goes to 0 and undefined (NaN) where the "
           "prediction is exactly 0, e.g. before a lag time" if m.likelihood == "proportional"
           else "log(DV) does not exist")
    where = f"output {m.output}" + (f", DVID {m.dvid}" if m.dvid is not None else "")
    raise data.error(f"{m.likelihood} residual error ({where}) with {what} at {int(bad.sum())} "
                     f"observation(s) (rows {listed}): {why}; use a combined error model "
                     f"(likelihood = \"combined\"), mark the records as BLQ (CENS = 1), or exclude them "
                     f"(MDV = 1)", row=int(rows[bad][0]), column="DV")


__all__ = ["ObservationModel", "LIKELIHOODS", "NORMAL_KINDS", "HAZARDS", "observation_from_dict", "resolve",
           "check_data"]
