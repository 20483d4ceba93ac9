"""The process's cache of built models, shared by everything that builds the same model again.

Simulating a design for many posteriors (regimen evaluation inside a trial's decision rule), drawing
SBC replicates from the prior, and individualising doses for one patient after another build the
same model on the same design again and again; the build, and above all the functions compiled on
the built model afterwards (:func:`bayesnlme.evaluate.predict.compiled_function` keeps them on the
:class:`~bayesnlme.build.BuiltModel`), cost seconds each time.  :func:`cached_build` keeps the last
``CACHE_SIZE`` built models, keyed by the spec (its dict *and* the identity of its structural model:
two specs with the same text but different custom structural functions are different models), the
design's records and the build options.
"""

from __future__ import annotations

from collections import OrderedDict

from bayesnlme.build.model import BuiltModel, build_model
from bayesnlme.data import NMData, read_nonmem

CACHE_SIZE = 8
_BUILT: OrderedDict = OrderedDict()


def cached_build(spec, design, **options) -> BuiltModel:
    """:func:`~bayesnlme.build.build_model` of ``spec`` on ``design``, reused when built before.

    Parameters
    ----------
    spec : ModelSpec
    design : path, NMData or pandas.DataFrame
    **options
        Keyword arguments of :func:`~bayesnlme.build.build_model` (part of the key).

    Returns
    -------
    BuiltModel
        The same object for the same spec, design and options while it stays in the cache: callers
        must not change it.
    """
    design = design if isinstance(design, NMData) else read_nonmem(design)
    key = (repr(spec.to_dict()), id(spec.structural), design.sha256, tuple(sorted(options.items())))
    hit = _BUILT.get(key)
    if hit is not None and hit[0] is spec.structural:   # the identity, not only the id, of the structural model
        _BUILT.move_to_end(key)
        return hit[1]
    built = build_model(spec, design, **options)
    _BUILT[key] = (spec.structural, built)
    while len(_BUILT) > CACHE_SIZE:
        _BUILT.popitem(last=False)
    return built


def clear() -> None:
    """Forget every cached model (tests; or to free memory)."""
    _BUILT.clear()
