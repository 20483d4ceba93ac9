"""The translation of one parsed control stream into a spec dict, step by step (see :mod:`.nonmem`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import numpy as np
import sympy
from sympy.core.function import AppliedUndef

from bayesnlme.errors import SpecError
from bayesnlme.importers.nonmem_assemble import assemble
from bayesnlme.importers.nonmem_blq import split_m3
from bayesnlme.importers.nonmem_data import NM_ITEMS, can_evaluate, column_mapping, observation_records, translate_frame
from bayesnlme.importers.nonmem_error import residual as classify_residual
from bayesnlme.importers.nonmem_error import without_fixed_zero
from bayesnlme.importers.nonmem_iov import occasion_column, occasion_layout, split_occasions
from bayesnlme.importers.nonmem_omega import translate_omegas
from bayesnlme.importers.nonmem_pk import (
    ADVANS,
    CENTRAL,
    DEPOT_EXTRAS,
    EVENT_ITEMS,
    SPECIAL,
    TRANS1,
    Untranslatable,
    claim_thetas,
    decompose,
    trans1_expressions,
)
from bayesnlme.importers.nonmem_result import (
    ImportResult,
    Item,
    Lines,
    NonmemImportError,
)
from bayesnlme.spec import ModelSpec
from bayesnlme.spec.toml_text import spec_toml

#: Records that carry model content bayesnlme has no place for.
UNTRANSLATED_RECORDS = {"PRED": "$PRED models (no ADVAN)", "DES": "differential equations ($DES)",
                        "MODEL": "$MODEL compartments", "MIX": "mixture models", "PRIOR": "NONMEM priors",
                        "LEVEL": "nested random-effect levels", "INFN": "user Fortran", "AES": "$AES",
                        "AESINITIAL": "$AES", "TTDF": "t-distributed ETAs", "PHIS": "$PHIS", "ETAS": "$ETAS"}
#: Records about estimation and output, not the model.
OUTPUT_RECORDS = {"ESTIMATION", "COVARIANCE", "TABLE", "SCATTERPLOT", "SIMULATION"}
MODEL_RECORDS = {"PROBLEM", "SIZES", "DATA", "INPUT", "SUBROUTINES", "PK", "ERROR", "THETA", "OMEGA", "SIGMA",
                 "ABBREVIATED"}


class Translation:
    """One control stream being translated; collects what maps, what does not and what is left out."""

    def __init__(self, model, path, values: dict, ext_columns: dict, estimates: bool):
        self.model, self.path, self.values = model, path, values
        self.values_are_estimates = estimates
        self.cs = model.internals.control_stream
        self.lines = Lines(self.cs, path)
        self.mapped, self.untranslated, self.notes = [], [], []
        self.zero_terms = set()   # THETAs/SIGMAs of residual terms fixed at 0 (dropped, not unused)
        self.nm = {p: (f"THETA({c[5:]})" if c.startswith("THETA") else c) for p, c in ext_columns.items()}
        self.thetas = {p for p, c in ext_columns.items() if c.startswith("THETA")}
        self.eta_nm = {e: f"ETA({i})" for i, e in enumerate(model.random_variables.etas.names, 1)}

    def fail(self, item: Item) -> None:
        self.untranslated.append(item)

    def error(self) -> NonmemImportError:
        n = len(self.untranslated)
        return NonmemImportError(f"{self.path}: {n} item{'s' if n != 1 else ''} cannot be translated to "
                                 f"bayesnlme: " + "; ".join(str(i) for i in self.untranslated))

    # ------------------------------------------------------------------ the steps
    def run(self, strict: bool) -> ImportResult:
        for rec in self.cs.records:
            if rec.name in UNTRANSLATED_RECORDS:
                self.fail(self.lines.record(rec, f"{UNTRANSLATED_RECORDS[rec.name]}: no bayesnlme equivalent"))
            elif rec.name in OUTPUT_RECORDS:
                self.notes.append(self.lines.record(rec, "estimation/output setting, not part of the model"))
            elif rec.name not in MODEL_RECORDS:
                self.fail(self.lines.record(rec, f"record ${rec.name} is not translated"))
        structural, names, scale = self._structural()
        self._columns()
        self._pk_environment(names)
        if self.trans1:
            names = self._rate_constants(names, scale)
        if CENTRAL in names:   # TRANS5/6: the central volume is the one S1 (S2) scales by
            volume = self._central_volume(scale)
            names = {volume if k == CENTRAL else k: v for k, v in names.items()}
            self.mapped.append(f"central volume (not an ADVAN{self.advan} parameter): {scale} -> V = {volume}")
        params = self._parameters(names, structural)
        self.layout = occasion_layout(self, params)
        if self.computed:
            self.mapped.append("covariates computed in $PK -> data columns " + ", ".join(
                f"{n} = {e}" for n, e in self.computed_columns().items()))
        self._scale(scale, names)
        res = self._residual()
        omegas, blocks = translate_omegas(self, params)
        self._unused_statements()
        d, comments = self._spec_dict(structural, params, res, omegas, blocks)
        data = self._data(res.log_dv if res else False)
        if self.untranslated and strict:
            raise self.error()
        try:
            spec = ModelSpec.from_dict(d, source=self.path.name)
        except SpecError as exc:
            if self.untranslated:   # the spec lacks what did not translate: say that, not its symptom
                raise self.error() from None
            raise NonmemImportError(f"{self.path}: the translated model is not a valid bayesnlme spec "
                                    f"({exc})") from None
        toml = spec_toml(d, self._header(), comments)
        derived = {**{k: str(e) for k, e in self.computed_columns().items()},
                   **({"OCC": self.layout.describe()} if self.layout is not None else {}),
                   **{k: ".".join(map(str, v)) for k, v in self.derived.items()}}
        return ImportResult(spec, toml, self.columns, derived,
                            bool(res and res.log_dv), data, self.mapped, self.untranslated, self.notes,
                            self.dose_scale)

    def _structural(self):
        sub = self.cs.get_records("SUBROUTINES")
        self.subroutine = sub[0] if sub else None
        advan = trans = None
        if sub:
            advan = int(sub[0].advan[5:])
            trans = int((sub[0].trans or "TRANS1")[5:])
        self.advan, self.trans1, self.k_labels = advan, trans == 1 and advan in TRANS1, {}
        if self.trans1:   # rate constants: the same structural model, read back as clearances and volumes
            trans = 2 if advan in (1, 2) else 4
        if (advan, trans) not in ADVANS:
            known = sorted(({1} if advan in TRANS1 else set()) | {t for a, t in ADVANS if a == advan})
            if known:
                why = (f"ADVAN{advan} has no TRANS{trans}; its parameterisations are "
                       + ", ".join(f"TRANS{t}" for t in known))
            else:
                why = f"ADVAN{advan} has no closed-form bayesnlme structural model (ADVAN1-4, 11, 12 do)"
            self.fail(self.lines.record(sub[0], why) if sub else Item(None, "$PRED", "no $SUBROUTINE ADVAN"))
            raise self.error()
        structural, names, scale = ADVANS[(advan, trans)]
        self.mapped.append(f"$SUBROUTINE ADVAN{advan} TRANS{1 if self.trans1 else trans} -> structural = "
                           f"\"{structural}\"")
        self.oral = structural.endswith("oral")
        return structural, dict(names), scale

    def _columns(self) -> None:
        # Pharmpy is a heavy optional dependency, imported only when a control stream is read
        from pharmpy.model.external.nonmem.parsing import parse_column_info

        di = self.model.datainfo
        # reserved name -> the name the code uses (DV=CONC: {"DV": "CONC"}), as Pharmpy's reader sees $INPUT
        synonyms = {k: v for k, v in parse_column_info(self.cs)[2].items() if k in NM_ITEMS}
        self.columns, problems = column_mapping(di.names, [c.drop for c in di], synonyms)
        inputs = self.cs.get_records("INPUT")
        for col, why in problems:
            self.fail(self.lines.record(inputs[0], f"{col}: {why}"))
        self.covariates = {c for c, new in self.columns.items() if new is not None} - EVENT_ITEMS - set(NM_ITEMS)
        self.derived, self.dose_scale = {}, 1.0

    def _pk_environment(self, names: dict) -> None:
        """Substitute the $PK assignments into each other: symbol -> expression, and which statements.

        A variable computed from data items alone in a way that is not one covariate's plain form
        (several items, ``(140-AGE)*WT/(72*SCR)``; an IF, ``IF (CRCL.GT.150) CRCL = 150``; a function,
        ``LOG(WT/70)``) becomes a data column of its own (:attr:`computed`), as NONMEM computes it per record.
        """
        self.env, self.deps, self.pk, self.computed = {}, {}, [], []
        self.abbr = self._abbreviations()
        before = [s for s in self.model.statements.before_odes if hasattr(s, "symbol")]
        reserved = set(names) | {"V", "K"} | {k for ks in TRANS1.values() for k in ks}
        for i, s in enumerate(before):
            sym, expr = sympy.Symbol(str(s.symbol)), without_abs(sympy.sympify(s.expression).xreplace(self.abbr))
            self.pk.append((sym, expr))
            deps = {("PK", i)}.union(*[self.deps.get(x, set()) for x in expr.free_symbols])
            full = expr.xreplace({k: v for k, v in self.env.items() if k in expr.free_symbols})
            if str(sym) not in reserved and not SPECIAL.match(str(sym)) and _computed_covariate(full, self.covariates):
                self.computed.append((str(sym), full))
                self.covariates.add(str(sym))
                full = sym
            self.env[sym] = full
            self.deps[sym] = deps
        self.used = set()

    def computed_columns(self) -> dict:
        """Each covariate computed in $PK -> its expression in the data items (later steps substituted)."""
        out = {}
        for name, expr in self.computed:
            out[name] = expr.xreplace({sympy.Symbol(k): v for k, v in out.items()})
        return out

    def _abbreviations(self) -> dict:
        """``$ABBR REPLACE THETA(CL)=THETA(1)``: the name in the code -> Pharmpy's parameter (``THETA_CL``)."""
        out = {}
        for rec in self.cs.get_records("ABBREVIATED"):
            names = rec.translate_to_pharmpy_names()
            out.update({sympy.Symbol(k): sympy.Symbol(names[v]) for k, v in rec.replaceopt.items() if v in names})
        return out

    def _rate_constants(self, names: dict, scale: str) -> dict:
        """TRANS1: {$PK symbol: bayesnlme name} with the clearances and volumes the rate constants imply.

        ``K = CL/V`` (the usual TRANS1 code) gives back the $PK's own ``CL``; otherwise ``K*V`` is added to
        the environment as a symbol of its own and decomposed like any parameter (``K = THETA(1)*EXP(ETA(1))``
        with ``V = THETA(2)*EXP(ETA(2))`` then fails there: ``CL = K*V`` has two ETAs).
        """
        volume = self._central_volume(scale)
        out = {}
        for nm_name, expr in trans1_expressions(self.advan, volume).items():
            missing = sorted(str(x) for x in expr.free_symbols if x not in self.env and str(x) != scale)
            if missing:
                self.fail(self.lines.record(self.subroutine, f"TRANS1 needs {', '.join(missing)} in $PK"))
                continue
            if any(x not in self.env for x in expr.free_symbols):
                continue   # no S1/S2: said by _scale
            full, own = expr.xreplace(self.env), sympy.Symbol(nm_name)
            self.used |= set().union(*[self.deps[x] for x in expr.free_symbols])   # the rate constants are model
            if expr.is_Symbol or (own in self.env and sympy.simplify(self.env[own] - full) == 0):
                out[str(expr) if expr.is_Symbol else nm_name] = names[nm_name]
                continue
            label = sympy.Symbol(str(expr))
            self.env[label], self.k_labels[str(label)] = full, sorted(str(x) for x in expr.free_symbols
                                                                      if str(x) != volume)
            self.deps[label] = set().union(*[self.deps[x] for x in expr.free_symbols])
            out[str(label)] = names[nm_name]
        derived = [f"{bn} = {nm}" for nm, bn in out.items() if nm != bn]
        self.mapped.append("TRANS1 rate constants -> " + (", ".join(derived) if derived else
                                                          f"the $PK's own {', '.join(out)} (K = CL/V ...)"))
        return out

    def _central_volume(self, scale: str) -> str:
        """The $PK name of the volume S1 (S2) is a multiple of (``S1 = V``, ``S2 = V/1000``), else S1 itself."""
        raw = [e for sym, e in self.pk if str(sym) == scale]
        if raw:
            syms = [x for x in raw[-1].free_symbols if x in self.env]
            if len(syms) == 1 and (raw[-1] / syms[0]).is_number:
                return str(syms[0])
        return scale

    def _assignment(self, name: str, reason: str) -> Item:
        """An item at the last $PK statement that assigns ``name``."""
        found = [i for i, (sym, _) in enumerate(self.pk) if str(sym) == name]
        return self.lines.statement("PK", found[-1] if found else -1, reason)

    def _locate(self, record: str, deps, symbols, reason: str) -> Item:
        """The last statement among ``deps`` that mentions one of ``symbols`` (else the last one), as an item."""
        stmts = self.pk if record == "PK" else self.err
        cands = sorted(i for r, i in deps if r == record)
        for i in reversed(cands):
            if {str(x) for x in stmts[i][1].free_symbols} & set(symbols):
                return self.lines.statement(record, i, reason)
        return self.lines.statement(record, cands[-1] if cands else -1, reason)

    def parameter_item(self, nonmem_name: str, reason: str) -> Item:
        """An item at the statement that defines a structural parameter."""
        return self._locate("PK", self.deps.get(sympy.Symbol(nonmem_name), set()), {nonmem_name}, reason)

    def _parameters(self, names: dict, structural: str) -> dict:
        if self.oral:
            names.update({k: v for k, v in DEPOT_EXTRAS.items() if sympy.Symbol(k) in self.env})
        for i, (sym, _) in enumerate(self.pk):
            if SPECIAL.match(str(sym)) and str(sym) not in names and not str(sym).startswith("S"):
                self.fail(self.lines.statement("PK", i, f"{sym} changes the NONMEM model (modelled rate/"
                                                        f"duration, bioavailability or lag of another compartment, "
                                                        f"model event time ...); no bayesnlme equivalent"))
        params, used_thetas, used_etas = {}, {}, {}
        for nm_name, bn in names.items():
            sym = sympy.Symbol(nm_name)
            if sym not in self.env and nm_name in ("V1", "V2") and sympy.Symbol("V") in self.env and bn == "V":
                sym = sympy.Symbol("V")   # V accepted for the central volume
            if sym not in self.env:
                self.fail(self.lines.record(self.subroutine, f"$PK does not define {nm_name}, which the ADVAN "
                                                             f"needs ({structural})"))
                continue
            self.used |= self.deps[sym]
            try:
                expr, occasions = split_occasions(bn, self.env[sym], self.iov_etas, self._eta_names())
                pm = decompose(bn, expr, self.thetas, self._eta_names(), self.covariates)
                pm.nonmem, pm.occasions = str(sym), occasions
                if occasions and pm.iiv != "lognormal":
                    etas = ", ".join(map(self.eta_nm.get, occasions.indicators))
                    raise Untranslatable(f"{bn} has occasion ETAs ({etas}) but "
                                         f"{'no IIV' if pm.iiv == 'none' else pm.iiv + ' IIV'}: bayesnlme's IOV is "
                                         f"P = TV*exp(ETA + KAPPA), a log-normal parameter with IIV",
                                         occasions.indicators)
                claim_thetas(bn, pm, used_thetas, self.nm)
                for eta in [pm.eta] * bool(pm.eta) + list(occasions.indicators if occasions else ()):
                    if eta in used_etas:
                        raise Untranslatable(f"{eta} is shared by {used_etas[eta]} and {bn}", {eta})
                    used_etas[eta] = bn
                params[bn] = pm
            except Untranslatable as exc:
                if str(sym) in self.k_labels:   # TRANS1: at the rate constant, saying what bayesnlme needs
                    self.fail(self._assignment(self.k_labels[str(sym)][0], f"TRANS1 {bn} = {sym}: {exc.reason}; "
                                               f"bayesnlme estimates clearances and volumes, so the rate constants "
                                               f"must be ratios of them (K = CL/V) or use TRANS2/TRANS4"))
                else:
                    self.fail(self._locate("PK", self.deps[sym], exc.symbols, exc.reason))
        return params

    def _eta_names(self) -> set:
        return set(self.model.random_variables.etas.names)

    @property
    def iov_etas(self) -> set:
        """ETAs on Pharmpy's IOV level: the members of ``$OMEGA BLOCK(n) ... SAME`` chains."""
        return {e for d in self.model.random_variables.etas if d.level != "IIV" for e in d.names}

    def _scale(self, scale: str, names: dict) -> None:
        central = next(k for k, v in names.items() if v == "V")
        s, v = sympy.Symbol(scale), sympy.Symbol(central if sympy.Symbol(central) in self.env else "V")
        if s not in self.env:
            self.fail(Item(None, "$PK", f"no {scale}: NONMEM's F is then the amount, bayesnlme predicts "
                                        f"amount / {central}"))
            return
        self.used |= self.deps[s]
        ratio = sympy.simplify(self.env[s] / self.env.get(v, sympy.nan))
        if ratio == 1:
            self.mapped.append(f"{scale} = {central}: prediction = amount / {central} (concentration)")
        elif ratio.is_number and ratio.is_positive:
            # F = A / (V*ratio) = (A/ratio) / V: the same prediction with the doses in 1/ratio units
            self.dose_scale = float(1 / ratio)
            shown = f"{central}/{self.dose_scale:g}" if ratio < 1 else f"{central}*{float(ratio):g}"
            self.mapped.append(f"{scale} = {shown}: prediction = amount x {self.dose_scale:g} / {central}; AMT (and "
                               f"RATE) x {self.dose_scale:g} in the data written (ImportResult.data, --data-out)")
        else:
            self.fail(self._locate("PK", self.deps[s], {scale}, f"{scale} is not {central} times a positive "
                                                                f"number"))

    def _residual(self):
        after = [s for s in self.model.statements.after_odes if hasattr(s, "symbol")]
        f, amount = sympy.Symbol("F"), {}
        if after and str(after[0].symbol) == "F" and "A_" in str(after[0].expression):
            # Pharmpy's link F = A_CENTRAL(t)/S1, not a statement of $ERROR: A(1) in $ERROR is F*S1
            link = sympy.sympify(after[0].expression)
            if not link.has(sympy.Piecewise):   # one observed compartment (else bayesnlme's reader refuses the data)
                amount = {a: f * sympy.simplify(a / link) for a in link.atoms(AppliedUndef)}
            after = after[1:]
        self.err, env, deps, self.censoring = [], dict(self.env), dict(self.deps), None
        for i, s in enumerate(after):
            sym = sympy.Symbol(str(s.symbol))
            expr = without_abs(sympy.sympify(s.expression).xreplace(amount).xreplace(self.abbr))
            self.err.append((sym, expr))
            deps[sym] = {("ERROR", i)}.union(*[deps.get(x, set()) for x in expr.free_symbols if x != f])
            env[sym] = expr.xreplace({k: w for k, w in env.items() if k in expr.free_symbols and k != f})
        self.err_deps = deps
        y = sympy.Symbol("Y")
        if y not in env:
            self.fail(Item(None, "$ERROR", "no Y = ... statement"))
            return None
        self.used |= deps[y]
        other = sorted({str(a.func) for a in env[y].atoms(AppliedUndef)})
        if other:
            self.fail(self._locate("ERROR", deps[y], {"t"}, f"Y uses {', '.join(other)}, the amount in a compartment "
                                                            f"other than the observed one: no bayesnlme equivalent"))
            return None
        rvs = self.model.random_variables
        eps_var, fixed = {}, {}
        names = list(rvs.epsilons.names)
        for a in names:
            eps_var[sympy.Symbol(a)] = sympy.Symbol(str(rvs.get_covariance(a, a)))
            for b in names:
                if a < b and rvs.get_covariance(a, b) != 0:
                    self.fail(self._locate("ERROR", deps[y], {a, b}, f"correlated EPSs ({a}, {b}): SIGMA BLOCK "
                                                                     f"has no bayesnlme equivalent"))
        for var in eps_var.values():
            par = self.model.parameters[str(var)]
            if par.fix:
                fixed[str(var)] = par.init
        zero = {n for n, v in self.values.items() if v.fixed and v.value == 0}
        flag = sympy.Symbol("F_FLAG")
        if flag in env:
            self.used |= deps[flag]
        try:
            observed, self.censoring = split_m3(env[y], env.get(flag), f, eps_var, fixed, self.thetas)
            full = classify_residual(observed, f, eps_var, fixed, self.thetas)
            res = without_fixed_zero(full, zero)
        except Untranslatable as exc:
            self.fail(self._locate("ERROR", deps[y], exc.symbols | {"Y"}, exc.reason))
            return None
        for name in set(full.sources) - set(res.sources):
            self.zero_terms.add(full.sources[name].name)
            self.mapped.append(f"{self.nm.get(full.sources[name].name, full.sources[name].name)} 0 FIX -> no "
                               f"{name} term")
        guards = sorted(i for r, i in deps[y] if r == "ERROR" and self.err[i][1].has(sympy.Piecewise))
        why = ("a guard on the prediction, dropped: bayesnlme refuses a proportional or exponential error on an "
               "observation whose prediction is 0 (before the first dose reaches the central compartment) and "
               "names its row; set MDV=1 on such records" if res.kind in ("proportional", "exponential")
               else "a guard on the prediction, dropped (bayesnlme needs none)")
        for i in guards if res.guards else ():
            self.notes.append(self.lines.statement("ERROR", i, why))
        if self.censoring is not None:
            self.mapped.append(f"$ERROR M3 (F_FLAG = 1, Y = PHI(...)) -> {self.censoring.describe()}")
        self.mapped.append(f"$ERROR Y -> residual type = \"{res.kind}\""
                           + (" (DV is log-transformed in the data: exponentiated on reading)" if res.log_dv else ""))
        return res

    def _unused_statements(self) -> None:
        for record, stmts in (("PK", self.pk), ("ERROR", getattr(self, "err", []))):
            for i, (sym, _) in enumerate(stmts):
                if (record, i) in self.used:
                    continue
                if not SPECIAL.match(str(sym)):
                    self.notes.append(self.lines.statement(record, i, "not used by the prediction or the "
                                                                      "error model (output only)"))
                elif str(sym).startswith("S"):
                    self.notes.append(self.lines.statement(record, i, "scale of a compartment that is not "
                                                                      "observed (bayesnlme observes the central one)"))

    # ------------------------------------------------------------------ assembling
    def _spec_dict(self, structural, params, res, omegas, blocks):
        return assemble(self, structural, params, res, omegas, blocks)

    def _header(self) -> list:
        out = [f"Imported from the NONMEM control stream {self.path.name} by bayesnlme import-nonmem (Pharmpy "
               f"{_pharmpy_version(self.model)}).",
               "Priors " + ("centred on the final estimates of the .ext file, widths from their standard errors"
                            if self.values_are_estimates else "weakly informative, centred on the initial values"),
               "(see bayesnlme.importers.nonmem_priors). OMEGA/SIGMA are NONMEM variances; omega_* and sigma_*",
               "here are standard deviations (square roots).",
               "Data columns: " + ", ".join(f"{k}->{v}" if v and v != k else (f"{k} dropped" if v is None else k)
                                            for k, v in self.columns.items())]
        if self.dose_scale != 1:
            k = f"{self.dose_scale:g}"
            out += [f"Doses: the control stream's scale makes the prediction amount x {k} / V; fit this spec to",
                    f"the data with AMT (and RATE) x {k} (ImportResult.data, --data-out), not to the $DATA file."]
        if self.computed:
            out.append("Covariates computed in $PK (add them to the data, or use ImportResult.data): "
                       + ", ".join(f"{k} = {e}" for k, e in self.computed_columns().items()))
        if self.censoring is not None:
            out.append(f"BLQ (M3): {self.censoring.describe()} (ImportResult.data has them)")
        if self.layout is not None:
            out.append(f"Occasions (add OCC to the data, or use ImportResult.data): OCC = {self.layout.describe()}")
        if self.derived:
            out.append("Derived 0/1 columns (add them to the data, or use ImportResult.data): "
                       + ", ".join(f"{k} = ({c}.{op}.{v})" for k, (c, op, v) in self.derived.items()))
        if self.untranslated:
            out.append("NOT TRANSLATED (this spec lacks them):")
            out += [f"  {i}" for i in self.untranslated]
        return out

    def _data(self, log_dv: bool):
        try:
            frame = self.model.dataset
        except Exception as exc:  # noqa: BLE001 - Pharmpy's reader raises many types; say why in a note
            frame, why = None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        else:
            why = "Pharmpy found no data"
        if frame is None:
            rec = self.cs.get_records("DATA")
            self.notes.append(self.lines.record(rec[0], f"data file not read ({why})") if rec
                              else Item(None, "$DATA", "no $DATA"))
            return None
        out = translate_frame(frame, self.columns, self.derived, log_dv, self.dose_scale, self.computed)
        if self.censoring is not None:
            out["CENS"], limit = self.censoring.columns(frame, observation_records(out), log_dv,
                                                        self.computed_columns())
            out["DV"] = np.where(out["CENS"] != 0, limit, out["DV"])
        if self.layout is not None:
            out["OCC"], problem = occasion_column(self.layout, frame, observation_records(out))
            if problem:
                self.fail(self._assignment(self.layout.parameter_nonmem, f"occasions: {problem}; bayesnlme "
                                           f"gives each observation the KAPPA of one occasion"))
        return out


def without_abs(expr):
    """``ABS(x)`` as ``IF (x.GE.0) THEN x ELSE -x``, folded into the expression around it: ``MAX(F, 1E-8)``
    (written ``((F)+(1E-8)+ABS((F)-(1E-8)))/2`` for Pharmpy) becomes the guard ``F if F >= 1E-8 else 1E-8``."""
    if not expr.has(sympy.Abs):
        return expr
    return sympy.piecewise_fold(expr.replace(sympy.Abs, lambda x: sympy.Piecewise((x, x >= 0), (-x, True))))


def _computed_covariate(expr, columns: set) -> bool:
    """True for an expression in data items only that is not one item's plain form (``WT/70`` stays a
    power or linear effect of WT): several items, an IF, or a function (EXP, LOG, SQRT)."""
    syms = {str(x) for x in expr.free_symbols}
    if not syms or not syms <= columns:
        return False
    if not can_evaluate(expr):
        return False
    return len(syms) > 1 or expr.has(sympy.Piecewise) or bool(expr.atoms(sympy.Function))


def _pharmpy_version(model) -> str:
    try:
        return version("pharmpy-core")
    except PackageNotFoundError:
        return "?"
