"""The model specification: one validated object that describes an NLME model.

A :class:`ModelSpec` holds

* the structural model (a :mod:`bayesnlme.structural` library name or a
  :class:`~bayesnlme.structural.StructuralModel` wrapping a user function);
* one :class:`Parameter` per individual parameter: its typical value (THETA)
  with a prior in natural units, or a fixed value, and its inter-individual
  variability (ETA): log-normal (default), normal, logit-normal or none, with a
  prior on OMEGA expressed as the *standard deviation* of ETA;
* optional OMEGA blocks (correlated ETAs, LKJ prior on the correlations);
* :class:`CovariateEffect` entries (power, exponential, linear, categorical);
* a :class:`ResidualError` (additive, proportional, combined or exponential);
* optionally a :class:`~bayesnlme.spec.mixture.Mixture`: subpopulations differing in one
  parameter's typical value (``[mixture]``).

Individual parameters are ``P_i = TV(P) * prod(covariate factors) * exp(ETA_i)``
for log-normal IIV, ``TV(P) * factors + ETA_i`` for normal IIV, and
``expit(logit(TV(P)) + ETA_i)`` for logit-normal IIV.

Spec files are TOML (read with :mod:`tomllib`) with the same content; nothing in
them is ever evaluated as code.  Every mistake raises :class:`SpecError` naming
the parameter or key at fault.  See ``model_library/*.toml`` for examples.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from bayesnlme.errors import SpecError
from bayesnlme.spec.components import (
    IIV_KINDS,
    KNOWN_DOMAINS,
    CovariateShrinkage,
    ResidualError,
    covariate_from_dict,
    parameter_from_dict,
    residual_from_dict,
    shrinkage_from_dict,
)
from bayesnlme.spec.mixture import Mixture, check_mixture, mixture_from_dict
from bayesnlme.spec.observation import observation_from_dict, resolve
from bayesnlme.spec.omega import check_fixed_blocks, fixed_block_from_dict
from bayesnlme.spec.priors import NAME_PATTERN, check_keys, number
from bayesnlme.structural import LIBRARY, StructuralModel


@dataclass(frozen=True)
class ModelSpec:
    """A complete, validated NLME model specification.

    Construct with keyword arguments, :meth:`from_dict` or :meth:`from_toml`;
    the constructor validates everything that does not need the data.
    """
    name: str
    structural: StructuralModel
    parameters: dict
    residual: ResidualError = field(default_factory=ResidualError)
    covariates: tuple = ()
    omega_blocks: tuple = ()
    lkj_eta: float = 2.0
    fixed_omega_blocks: tuple = ()   # of bayesnlme.spec.omega.FixedBlock
    description: str = ""
    observations: tuple = ()
    shrinkage: CovariateShrinkage | None = None
    mixture: Mixture | None = None

    def __post_init__(self):
        _validate_spec(self)
        self.observation_models()   # validates outputs and DVIDs

    def observation_models(self) -> tuple:
        """The observation models (:mod:`bayesnlme.spec.observation`): ``[[observations]]`` or the ``[residual]``
        one."""
        return resolve(self.observations, self.residual, self.structural)

    def observation_model_of(self, output: str, *, continuous: bool = False):
        """The first observation model observing structural ``output`` (with ``continuous``: a continuous
        likelihood), or None: which observation type is, e.g., the drug concentration."""
        for m in self.observation_models():
            if m.output == output and (m.family.continuous or not continuous):
                return m
        return None

    def observation_parameter_names(self) -> list[str]:
        """Residual/outcome parameters in summary order (``sigma_add`` ... for a single residual)."""
        return [n for m in self.observation_models() for n in m.parameter_names()]

    def population_parameter_names(self) -> list[str]:
        """Estimated population parameters in summary order: THETA, covariate effects, OMEGA, correlations, SIGMA.

        These are the names of the model's posterior variables (``omega_<P>`` is the SD of ETA on P).
        """
        names = [p for p, par in self.parameters.items() if par.fixed is None]
        names += [n for eff in self.covariates for n in eff.estimated_names()]
        names += [f"omega_{p}" for p in self.eta_parameters if self.parameters[p].omega_fixed is None]
        names += [f"omega_iov_{p}" for p, par in self.parameters.items() if par.omega_iov is not None]
        for block in self.omega_blocks:
            names += [f"corr_{a}_{b}" for i, a in enumerate(block) for b in block[i + 1:]]
        names += self.observation_parameter_names()
        if self.mixture is not None:
            names += self.mixture.parameter_names()
        return names

    # ------------------------------------------------------------------ queries
    @property
    def eta_parameters(self) -> list[str]:
        """Parameters with a random effect, in spec order."""
        return [p for p, par in self.parameters.items() if par.has_eta]

    @property
    def covariate_columns(self) -> list[str]:
        return sorted({c.covariate for c in self.covariates})

    def with_residual(self, kind: str) -> "ModelSpec":
        """The same model with another residual error model (default priors)."""
        return replace(self, residual=residual_from_dict({"type": kind}))

    # ------------------------------------------------------------------ data binding
    def bind(self, data) -> "ModelSpec":
        """Check the spec against a data set; fill categorical levels from the data.

        Raises
        ------
        SpecError
            A covariate effect names a column the data do not have.
        DataError
            A needed covariate is missing for a subject, or invalid for its effect.
        """
        cols = data.columns
        if self.mixture is not None and self.mixture.covariate is not None:
            _bind_mixture_covariate(self.mixture.covariate, data)
        effects = []
        for eff in self.covariates:
            if eff.covariate not in data.covariate_names:
                raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: column "
                                f"{eff.covariate} is not a covariate in {data.source} "
                                f"(columns: {', '.join(cols)})")
            data.require_covariates([eff.covariate])
            values = data.baseline_covariates([eff.covariate])[eff.covariate]
            varies = bool((data.frame.groupby("_SUBJ")[eff.covariate].nunique(dropna=True) > 1).any())
            if eff.time_varying is None:
                eff = replace(eff, time_varying=varies)
            if eff.time_varying:
                values = data.observation_covariates([eff.covariate])[eff.covariate]
                values.index = [data.ids[i] for i in data.obs_subject]
                if self.parameters[eff.parameter].iiv not in ("lognormal", "none"):
                    raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: time-varying "
                                    f"covariates need a log-normal (or no) IIV on {eff.parameter}")
            if eff.kind == "categorical" and eff.levels:
                # already bound (a fitted spec on a new design, e.g. one patient): its effects are the fit's
                unknown = sorted(set(values) - {eff.reference} - set(eff.levels), key=str)
                if unknown:
                    raise data.error(f"covariate {eff.covariate} has level {unknown[0]!r}, which the model "
                                     f"does not know (levels: {eff.reference!r}, "
                                     f"{', '.join(map(repr, eff.levels))})", column=eff.covariate)
            elif eff.kind == "categorical":
                levels = sorted(set(values) - {eff.reference}, key=str)
                if eff.reference not in set(values):
                    raise SpecError(f"covariate effect on {eff.parameter}: reference level "
                                    f"{eff.reference!r} of {eff.covariate} does not occur in the data "
                                    f"(levels: {sorted(set(values), key=str)})")
                eff = replace(eff, levels=tuple(levels))
            else:
                if not all(isinstance(v, (int, float)) for v in values):
                    raise data.error(f"covariate {eff.covariate} must be numeric for a {eff.kind} "
                                     f"effect on {eff.parameter}", column=eff.covariate)
                if eff.kind == "power" and (values <= 0).any():
                    bad = values.index[(values <= 0).to_numpy()][0]
                    subj = int(list(data.ids).index(bad))
                    raise data.error(f"covariate {eff.covariate} must be positive for a power effect "
                                     f"(ID {bad} has {values[bad]:g})", row=data._first_row[subj],
                                     column=eff.covariate)
            effects.append(eff)
        return replace(self, covariates=tuple(effects))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """A plain dict with the TOML layout (round-trips through :meth:`from_dict`)."""
        d = {"name": self.name, "description": self.description,
             "structural": self.structural.name,
             "parameters": {p: par.to_dict() for p, par in self.parameters.items()},
             "residual": self.residual.to_dict()}
        if self.observations:
            d["observations"] = [o.to_dict() for o in self.observations]
        if self.omega_blocks:
            d["random_effects"] = {"blocks": [list(b) for b in self.omega_blocks], "lkj_eta": self.lkj_eta}
        if self.fixed_omega_blocks:
            d.setdefault("random_effects", {})["fixed_blocks"] = [b.to_dict() for b in self.fixed_omega_blocks]
        if self.covariates:
            d["covariates"] = [c.to_dict() for c in self.covariates]
        if self.shrinkage is not None:
            d["covariate_shrinkage"] = self.shrinkage.to_dict()
        if self.mixture is not None:
            d["mixture"] = self.mixture.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, *, structural: StructuralModel | None = None,
                  source: str = "spec") -> "ModelSpec":
        """Build a spec from the TOML layout (see ``model_library/``).

        Parameters
        ----------
        structural : StructuralModel, optional
            A user structural model; then the ``structural`` key, if present,
            must equal its name.
        """
        return _parse(d, structural, source)

    @classmethod
    def from_toml(cls, path, **kwargs) -> "ModelSpec":
        """Read a spec from a TOML file (parsed with :mod:`tomllib`, never executed)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec file ({exc.strerror})") from None
        return cls.from_toml_text(text, source=path.name, **kwargs)

    @classmethod
    def from_toml_text(cls, text: str, *, source: str = "spec", **kwargs) -> "ModelSpec":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{source}: not valid TOML ({exc})") from None
        return _parse(d, kwargs.get("structural"), source)


# ---------------------------------------------------------------------- construction helpers
def _parse(d, structural, source) -> "ModelSpec":
    """Every parse goes through here: a value of a type no check foresaw still gets a one-line SpecError.

    The checks below name the key at fault; this net only catches what they miss (the fuzz tests
    assert that it never fires for the inputs they generate).
    """
    if not isinstance(d, dict):
        raise SpecError(f"{source}: a spec is a table of keys (name, structural, parameters, ...)")
    try:
        return _from_dict(d, structural, source)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        raise SpecError(f"{source}: malformed spec, a value has the wrong type or shape "
                        f"({type(exc).__name__}: {exc})") from None


def _from_dict(d, structural, source):
    check_keys(d, ("name", "description", "structural", "parameters", "residual",
                    "random_effects", "covariates", "observations", "covariate_shrinkage", "mixture"), source)
    if structural is None:
        sname = d.get("structural")
        if sname is None:
            raise SpecError(f"{source}: missing 'structural' (one of {', '.join(sorted(LIBRARY))})")
        if not isinstance(sname, str) or sname not in LIBRARY:
            raise SpecError(f"{source}: unknown structural model {sname!r}; known: {', '.join(sorted(LIBRARY))}")
        structural = LIBRARY[sname]
    elif "structural" in d and d["structural"] != structural.name:
        raise SpecError(f"{source}: structural {d['structural']!r} does not match the given model {structural.name!r}")
    params = d.get("parameters", {})
    if not isinstance(params, dict) or not params:
        raise SpecError(f"{source}: 'parameters' must be a table with one entry per parameter")
    parameters = {n: parameter_from_dict(n, p, source) for n, p in params.items()}
    re_ = d.get("random_effects", {})
    check_keys(re_, ("blocks", "lkj_eta", "fixed_blocks"), f"{source}: random_effects")
    blocks = re_.get("blocks", [])
    if not isinstance(blocks, list) or not all(isinstance(b, list) for b in blocks):
        raise SpecError(f"{source}: random_effects.blocks must be a list of parameter lists, e.g. [[\"CL\", \"V\"]]")
    fixed_blocks = re_.get("fixed_blocks", [])
    if not isinstance(fixed_blocks, list):
        raise SpecError(f"{source}: random_effects.fixed_blocks must be a list of tables")
    covs = d.get("covariates", [])
    if not isinstance(covs, list):
        raise SpecError(f"{source}: 'covariates' must be an array of tables ([[covariates]])")
    try:
        return ModelSpec(name=str(d.get("name", source)), structural=structural, parameters=parameters,
                         residual=residual_from_dict(d.get("residual", {}), source),
                         covariates=tuple(covariate_from_dict(c, source) for c in covs),
                         omega_blocks=tuple(tuple(b) for b in blocks),
                         lkj_eta=number(re_.get("lkj_eta", 2.0), f"{source}: random_effects.lkj_eta", True),
                         fixed_omega_blocks=tuple(fixed_block_from_dict(b, f"{source}: random_effects.fixed_blocks")
                                                  for b in fixed_blocks),
                         description=str(d.get("description", "")),
                         observations=_observations_from_list(d.get("observations", []), source),
                         shrinkage=shrinkage_from_dict(d.get("covariate_shrinkage"), source),
                         mixture=mixture_from_dict(d["mixture"], source) if "mixture" in d else None)
    except SpecError as exc:
        msg = str(exc)
        raise SpecError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def _observations_from_list(obs, source) -> tuple:

    if not isinstance(obs, list):
        raise SpecError(f"{source}: 'observations' must be an array of tables ([[observations]])")
    return tuple(observation_from_dict(o, f"{source}: observations[{i}]") for i, o in enumerate(obs))


def _validate_spec(spec: ModelSpec) -> None:
    st = spec.structural
    if not isinstance(st, StructuralModel):
        raise SpecError(f"structural must be a StructuralModel or a library name, got {st!r}")
    known = st.all_parameters
    for name, par in spec.parameters.items():
        if not NAME_PATTERN.match(name):
            raise SpecError(f"parameter name {name!r} must be letters and digits, starting with a letter")
        if name not in known:
            raise SpecError(f"unknown parameter {name!r} for structural model {st.name} "
                            f"(its parameters: {', '.join(known)})")
        if par.iiv not in IIV_KINDS:
            raise SpecError(f"parameter {name}: unknown iiv {par.iiv!r}; known: {', '.join(IIV_KINDS)}")
        if (par.prior is None) == (par.fixed is None):
            raise SpecError(f"parameter {name}: give exactly one of 'prior' or 'fixed'")
        domain = {"lognormal": (0, math.inf), "logit": (0, 1)}.get(par.iiv, KNOWN_DOMAINS.get(name))
        if domain is not None:
            lo, hi = domain
            if par.prior is not None:
                plo, phi = par.prior.support
                if plo < lo or phi > hi:
                    raise SpecError(f"parameter {name}: impossible prior: {par.prior.dist} has support "
                                    f"({plo:g}, {phi:g}) but {name} must lie in ({lo:g}, {hi:g})"
                                    + (f" for {par.iiv} IIV" if par.iiv in ("lognormal", "logit") else ""))
            elif not lo <= par.fixed <= hi or (par.fixed == lo and par.iiv in ("lognormal", "logit")):
                raise SpecError(f"parameter {name}: fixed value {par.fixed:g} outside ({lo:g}, {hi:g})")
        if par.has_eta and par.omega is not None and par.omega.support[0] < 0:
            raise SpecError(f"parameter {name}: impossible prior: omega (SD of ETA) must be positive, "
                            f"but {par.omega.dist} allows negative values")
        if par.has_eta and (par.omega is None) == (par.omega_fixed is None):
            raise SpecError(f"parameter {name}: give exactly one of 'omega' or 'omega_fixed'")
        if par.omega_iov is not None and par.iiv != "lognormal":
            raise SpecError(f"parameter {name}: inter-occasion variability (omega_iov) needs "
                            f"iiv = \"lognormal\", got {par.iiv!r}")
        if par.omega_iov is not None and par.omega_iov.support[0] < 0:
            raise SpecError(f"parameter {name}: impossible prior: omega_iov (SD of KAPPA) must be positive")
        if par.centered and not par.has_eta:
            raise SpecError(f"parameter {name}: centered = true needs a random effect (iiv is \"none\")")
    missing = [p for p in st.parameters if p not in spec.parameters]
    if missing:
        raise SpecError(f"structural model {st.name} needs parameter(s) {', '.join(missing)}")
    for s, prior in spec.residual.priors.items():
        if prior.is_fixed and prior.args["value"] <= 0:
            raise SpecError(f"residual {s}: a fixed standard deviation must be positive, got {prior.args['value']:g}")
        if prior.support[0] < 0:
            raise SpecError(f"residual {s}: impossible prior: a standard deviation must be positive, "
                            f"but {prior.dist} allows negative values")
    seen = set()
    for block in spec.omega_blocks:
        if len(block) < 2:
            raise SpecError(f"OMEGA block {list(block)} needs at least two parameters")
        for p in block:
            if p not in spec.parameters:
                raise SpecError(f"OMEGA block {list(block)}: unknown parameter {p!r}")
            if not spec.parameters[p].has_eta:
                raise SpecError(f"OMEGA block {list(block)}: parameter {p} has no random effect (iiv = \"none\")")
            if spec.parameters[p].omega is None:
                raise SpecError(f"OMEGA block {list(block)}: parameter {p} has a fixed omega; "
                                f"block members need an omega prior")
            if p in seen:
                raise SpecError(f"parameter {p} appears in more than one OMEGA block")
            if spec.parameters[p].centered:
                raise SpecError(f"OMEGA block {list(block)}: parameter {p} is centered; block members "
                                f"use the non-centred parameterisation (remove centered = true)")
            if spec.parameters[p].omega.dist != spec.parameters[block[0]].omega.dist:
                raise SpecError(f"OMEGA block {list(block)}: the omega priors of a block must be of one "
                                f"family ({block[0]}: {spec.parameters[block[0]].omega.dist}, "
                                f"{p}: {spec.parameters[p].omega.dist})")
            seen.add(p)
    check_fixed_blocks(spec)
    names = set()
    for eff in spec.covariates:
        if eff.parameter not in spec.parameters:
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: unknown parameter "
                            f"{eff.parameter!r} (parameters: {', '.join(spec.parameters)})")
        if spec.parameters[eff.parameter].iiv == "logit":
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: covariate effects on a "
                            f"logit-normal parameter are not supported")
        if spec.parameters[eff.parameter].fixed is not None:
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: {eff.parameter} is fixed")
        if eff.kind == "piecewise" and not isinstance(eff.reference, (int, float)):
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: reference must be a number")
        key = (eff.covariate, eff.parameter)
        if key in names:
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter} is given twice")
        names.add(key)
        if eff.shared_with is not None:
            _check_shared(eff, spec.covariates)
    if spec.mixture is not None:
        check_mixture(spec.mixture, spec.parameters)


def _check_shared(eff, effects) -> None:
    """``shared_with``: an estimated effect of the same covariate and kind on another parameter, not shared."""
    where = f"covariate effect {eff.label}, shared_with = {eff.shared_with!r}"
    owner = [e for e in effects if e.parameter == eff.shared_with and e.covariate == eff.covariate]
    if eff.shared_with == eff.parameter or not owner:
        raise SpecError(f"{where}: needs an effect of {eff.covariate} on {eff.shared_with} (its theta is shared)")
    owner = owner[0]
    if owner.shared_with is not None:
        raise SpecError(f"{where}: that effect is itself shared (with {owner.shared_with}); name that one")
    if owner.kind != eff.kind:
        raise SpecError(f"{where}: that effect is {owner.kind}, this one {eff.kind}; a shared theta needs one kind")
    if owner.fixed is not None:
        raise SpecError(f"{where}: that effect is fixed ({owner.fixed:g}); write fixed = {owner.fixed:g} here")


def _bind_mixture_covariate(column: str, data) -> None:
    """The mixing probabilities' covariate: a numeric column of the data, known for every subject."""
    if column not in data.covariate_names:
        raise SpecError(f"mixture: covariate column {column} is not a covariate in {data.source} "
                        f"(columns: {', '.join(data.columns)})")
    data.require_covariates([column])
    values = data.baseline_covariates([column])[column]
    if not all(isinstance(v, (int, float)) for v in values):
        raise data.error(f"covariate {column} must be numeric for the mixing probabilities", column=column)
