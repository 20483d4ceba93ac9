"""Specification: construction, TOML round trip and readable errors."""

import math

import pytest

from bayesnlme.data import read_nonmem
from bayesnlme.datasets import load_theophylline
from bayesnlme.errors import DataError, SpecError
from bayesnlme.spec import ModelSpec, Prior, library_names, load_spec
from bayesnlme.structural import StructuralModel

BASE = """
name = "t"
structural = "1cmt_oral"
[parameters.CL]
prior = { dist = "lognormal", median = 3.0, sigma = 1.0 }
[parameters.V]
prior = { dist = "lognormal", median = 30.0, sigma = 1.0 }
[parameters.KA]
prior = { dist = "lognormal", median = 1.0, sigma = 1.0 }
"""


def spec_from(extra: str = "", base: str = BASE) -> ModelSpec:
    return ModelSpec.from_toml_text(base + extra, source="t.toml")


def test_library_entries_all_load():
    names = library_names()
    for n in ["pk_1cmt_iv", "pk_1cmt_infusion", "pk_1cmt_oral", "pk_2cmt_iv", "pk_2cmt_infusion", "pk_2cmt_oral"]:
        assert n in names
        spec = load_spec(n)
        assert spec.name == n
        # log-normal IIV on clearance and volume terms (and KA for oral models)
        for p in spec.parameters:
            assert spec.parameters[p].iiv == "lognormal"
        assert ("KA" in spec.parameters) == n.endswith("oral")


def test_defaults_lognormal_iiv_and_combined_error():
    s = spec_from()
    assert s.eta_parameters == ["CL", "V", "KA"]
    assert s.residual.kind == "combined"
    assert s.residual.sigma_names() == ("sigma_add", "sigma_prop")
    assert s.parameters["CL"].omega == Prior("halfnormal", {"sigma": 0.5})


def test_round_trip_through_dict():
    s = spec_from("""
[random_effects]
blocks = [["CL", "V"]]
lkj_eta = 3.0
[[covariates]]
parameter = "CL"
covariate = "WT"
type = "power"
reference = 70
fixed = 0.75
[residual]
type = "proportional"
""")
    again = ModelSpec.from_dict(s.to_dict())
    assert again == s
    assert again.omega_blocks == (("CL", "V"),)
    assert again.covariates[0].fixed == 0.75


@pytest.mark.parametrize("extra, message", [
    ("[parameters.CLX]\nprior = { dist = 'lognormal', median = 1.0, sigma = 1.0 }\n",
     "unknown parameter 'CLX' for structural model 1cmt_oral"),
    ("[residual]\ntype = 'weird'\n", "unknown residual error type 'weird'"),
    ("[random_effects]\nblocks = [['CL', 'Q']]\n", r"OMEGA block \['CL', 'Q'\]: unknown parameter 'Q'"),
    ("[[covariates]]\nparameter = 'CLQ'\ncovariate = 'WT'\ntype = 'power'\nreference = 70\n",
     "unknown parameter 'CLQ'"),
    ("[[covariates]]\nparameter = 'CL'\ncovariate = 'WT'\ntype = 'power'\nreference = -70\n",
     "reference: must be positive"),
    ("[[covariates]]\nparameter = 'CL'\ncovariate = 'WT'\ntype = 'cubic'\nreference = 70\n",
     "unknown type 'cubic'"),
    ("[residual]\ntype = 'additive'\nsigma_prop = { dist = 'halfnormal', sigma = 1.0 }\n",
     "sigma_prop given but residual type additive uses sigma_add"),
    ("[residual]\nsigma_add = { dist = 'normal', mu = 0.0, sigma = 1.0 }\n",
     "residual sigma_add: impossible prior"),
])
def test_spec_errors_name_the_culprit(extra, message):
    with pytest.raises(SpecError, match=message):
        spec_from(extra)


@pytest.mark.parametrize("prior, message", [
    ("{ dist = 'normal', mu = 3.0, sigma = 1.0 }", r"parameter CL: impossible prior: normal has support"),
    ("{ dist = 'lognormal', median = 3.0, sigma = -1.0 }", "impossible prior: lognormal sigma must be positive"),
    ("{ dist = 'lognormal', median = 3.0 }", "missing sigma"),
    ("{ dist = 'lognormal', median = 3.0, sigma = 1.0, mu = 2 }", "unknown mu"),
    ("{ dist = 'gamma', alpha = 3.0 }", "unknown prior distribution 'gamma'"),
    ("{ dist = 'uniform', lower = 5.0, upper = 1.0 }", "needs lower < upper"),
    ("{ dist = 'lognormal', median = 'abc', sigma = 1.0 }", "must be a number"),
    ("3.0", "a prior is a table with 'dist'"),
])
def test_impossible_priors(prior, message):
    text = BASE.replace('prior = { dist = "lognormal", median = 3.0, sigma = 1.0 }', f"prior = {prior}")
    with pytest.raises(SpecError, match=message) as info:
        spec_from(base=text)
    assert "t.toml" in str(info.value)


def test_fraction_parameter_needs_unit_interval_prior():
    with pytest.raises(SpecError, match=r"parameter F: impossible prior.*\(0, 1\)"):
        spec_from("[parameters.F]\niiv = 'none'\nprior = { dist = 'lognormal', median = 0.5, sigma = 1.0 }\n")
    s = spec_from("[parameters.F]\niiv = 'logit'\nprior = { dist = 'beta', alpha = 5.0, beta = 2.0 }\n")
    assert s.parameters["F"].iiv == "logit"


def test_unknown_keys_and_bad_toml():
    with pytest.raises(SpecError, match=r"parameter CL: unknown key\(s\) 'priors'"):
        spec_from(base=BASE.replace("[parameters.CL]\nprior", "[parameters.CL]\npriors"))
    with pytest.raises(SpecError, match="not valid TOML"):
        ModelSpec.from_toml_text("name = ", source="x.toml")
    with pytest.raises(SpecError, match="unknown structural model '3cmt_magic'"):
        spec_from(base=BASE.replace("1cmt_oral", "3cmt_magic"))
    with pytest.raises(SpecError, match="needs parameter"):
        spec_from(base=BASE.replace("[parameters.KA]\nprior = { dist = \"lognormal\", median = 1.0, sigma = 1.0 }", ""))


def test_spec_file_is_data_not_code(tmp_path):
    # a spec value that looks like Python is kept as an inert string, never evaluated
    marker = tmp_path / "pwned"
    text = BASE.replace('name = "t"', f'name = "__import__(\'os\').system(\'touch {marker}\')"')
    s = spec_from(base=text)
    assert s.name.startswith("__import__")
    assert not marker.exists()


def test_bind_checks_covariates_against_data(tmp_path):
    data = read_nonmem(load_theophylline())
    s = spec_from("[[covariates]]\nparameter = 'CL'\ncovariate = 'AGE'\ntype = 'power'\nreference = 40\n")
    with pytest.raises(SpecError, match=r"column AGE is not a covariate in <DataFrame> \(columns: .*WT"):
        s.bind(data)
    df = load_theophylline()
    df.loc[df["ID"] == 3, "WT"] = float("nan")
    s = spec_from("[[covariates]]\nparameter = 'CL'\ncovariate = 'WT'\ntype = 'power'\nreference = 70\n")
    with pytest.raises(DataError, match=r"row 25, column WT: covariate WT is missing for every record of ID 3"):
        s.bind(read_nonmem(df))


def test_categorical_levels_from_data():
    df = load_theophylline()
    df["GRP"] = (df["ID"] % 3).astype(int)
    s = spec_from("[[covariates]]\nparameter = 'V'\ncovariate = 'GRP'\ntype = 'categorical'\nreference = 0\n")
    bound = s.bind(read_nonmem(df))
    assert bound.covariates[0].levels == (1, 2)
    assert bound.covariates[0].effect_names() == ["GRP_1_on_V", "GRP_2_on_V"]
    bad = spec_from("[[covariates]]\nparameter = 'V'\ncovariate = 'GRP'\ntype = 'categorical'\nreference = 7\n")
    with pytest.raises(SpecError, match="reference level 7 of GRP does not occur"):
        bad.bind(read_nonmem(df))


def test_custom_structural_function():
    def model(params, doses):
        return params["A"] * 0 + 1.0

    st = StructuralModel.custom(model, ["A"])
    s = ModelSpec.from_dict({"parameters": {"A": {"prior": {"dist": "normal", "mu": 0, "sigma": 1},
                                                  "iiv": "normal"}}}, structural=st)
    assert s.structural.name == "model" and s.eta_parameters == ["A"]


def test_prior_medians():
    assert Prior.from_dict({"dist": "lognormal", "median": 4.0, "sigma": 2}, "x").median() == 4.0
    assert math.isclose(Prior.from_dict({"dist": "halfnormal", "sigma": 1}, "x").median(), 0.6744897501960817)
    assert math.isclose(Prior.from_dict({"dist": "exponential", "lam": 2}, "x").median(), math.log(2) / 2)


def test_unknown_library_entry():
    with pytest.raises(SpecError, match="unknown model 'pk_9cmt'.*pk_1cmt_oral"):
        load_spec("pk_9cmt")
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec("missing.toml")


@pytest.mark.parametrize("name", library_names())
def test_spec_toml_text_round_trips_every_library_model(name):
    from bayesnlme.spec.toml_text import spec_toml

    spec = load_spec(name)
    assert ModelSpec.from_toml_text(spec_toml(spec.to_dict())).to_dict() == spec.to_dict()


def test_covariate_shrinkage_table():
    d = load_spec("pk_1cmt_oral").to_dict()
    d["covariates"] = [{"parameter": "CL", "covariate": "WT", "type": "power", "reference": 70,
                        "prior": {"dist": "normal", "mu": 0.0, "sigma": 1.0}}]
    d["covariate_shrinkage"] = {"type": "horseshoe", "tau0": 0.05}
    spec = ModelSpec.from_dict(d)
    assert spec.shrinkage.tau0 == 0.05 and spec.shrinkage.slab_df == 4.0
    from bayesnlme.spec.toml_text import spec_toml
    assert ModelSpec.from_toml_text(spec_toml(spec.to_dict())).to_dict() == spec.to_dict()
    for bad, msg in (({"type": "lasso"}, "unknown type 'lasso'"), ({"tau0": -1}, "tau0"),
                     ({"slab": 2}, "slab")):
        with pytest.raises(SpecError, match=msg):
            ModelSpec.from_dict({**d, "covariate_shrinkage": bad})
