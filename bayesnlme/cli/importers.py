"""``bayesnlme import-nonmem``: a NONMEM control stream -> a bayesnlme spec (TOML)."""

from __future__ import annotations

from pathlib import Path

from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.importers import import_nonmem


def run_import_nonmem(args) -> int:
    result = import_nonmem(args.control_stream, priors=args.priors, ext=args.ext, data=args.data,
                           strict=not args.allow_untranslated)
    out = Path(args.out)
    write_text_atomic(out, result.toml)
    spec = result.spec
    print(f"{Path(args.control_stream).name} -> {out}: structural model {spec.structural.name}, parameters "
          f"{', '.join(spec.parameters)}, residual {spec.residual.kind}, {len(spec.covariates)} covariate "
          f"effect(s), priors {args.priors}")
    print("translated:")
    for line in result.mapped:
        print(f"  {line}")
    if result.derived:
        print("derived data columns: " + ", ".join(f"{k} = ({v})" for k, v in result.derived.items()))
    if result.notes:
        print("left out (not part of the model):")
        for item in result.notes:
            print(f"  {item}")
    if result.untranslated:
        print(f"NOT TRANSLATED ({len(result.untranslated)}; the spec lacks them, see the top of {out}):")
        for item in result.untranslated:
            print(f"  {item}")
    data_out = args.data_out
    if result.dose_scale != 1:
        # the spec is right only with the converted doses: write them even when --data-out was not given
        data_out = data_out or (out.with_name(out.stem + "_data.csv") if result.data is not None else None)
        print(f"doses: AMT (and RATE) x {result.dose_scale:g} to match the control stream's scale; fit {out} to "
              f"the data written to {data_out or '--data-out'}, not to the $DATA file as it is")
    if data_out:
        if result.data is None:
            print("no data written: the $DATA file could not be read (see above)")
        else:
            write_atomic(data_out, lambda tmp: result.data.to_csv(tmp, index=False))
            print(f"wrote {data_out} ({len(result.data)} records, columns {', '.join(result.data.columns)})")
    print(f"wrote {out}")
    return 0
