"""Fixed OMEGA blocks: correlated ETAs whose covariance is known, not estimated.

A published model (a NONMEM ``$OMEGA BLOCK(2) ... FIX``, a model used for dose individualisation)
often gives the whole OMEGA block.  In the spec the members' SDs are their ``omega_fixed`` and the
block gives their correlation::

    [random_effects]
    fixed_blocks = [{ parameters = ["CL", "V"], correlation = [[1.0, 0.6], [0.6, 1.0]] }]

The builder then writes ``ETA_i = L z_i`` with ``L`` the constant Cholesky factor of
``OMEGA = diag(omega) R diag(omega)``; nothing about the block is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayesnlme.errors import SpecError
from bayesnlme.spec.priors import check_keys


@dataclass(frozen=True)
class FixedBlock:
    """Members of a fixed OMEGA block and their correlation matrix (unitless).

    Attributes
    ----------
    parameters : tuple of str
        The structural parameters whose ETAs are correlated.
    correlation : tuple of tuple of float
        Symmetric, unit diagonal, positive definite; in the order of ``parameters``.
    """
    parameters: tuple
    correlation: tuple

    def covariance(self, sds) -> np.ndarray:
        """OMEGA of the block for the members' SDs (variances on the ETA scale)."""
        s = np.asarray(sds, float)
        return np.asarray(self.correlation) * np.outer(s, s)

    def cholesky(self, sds) -> np.ndarray:
        """Lower Cholesky factor of :meth:`covariance`: ``ETA = L z`` with ``z ~ N(0, I)``."""
        return np.linalg.cholesky(self.covariance(sds))

    def to_dict(self) -> dict:
        return {"parameters": list(self.parameters), "correlation": [list(r) for r in self.correlation]}


def fixed_block_from_dict(d, where: str) -> FixedBlock:
    """Parse one ``fixed_blocks`` entry; the matrix is checked here, the members by :func:`check_fixed_blocks`."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: each fixed block is a table {{ parameters = [...], correlation = [[...]] }}")
    check_keys(d, ("parameters", "correlation"), where)
    params, corr = d.get("parameters"), d.get("correlation")
    if not isinstance(params, list) or len(params) < 2 or not all(isinstance(p, str) for p in params):
        raise SpecError(f"{where}: parameters must list at least two parameter names")
    k = len(params)
    try:
        r = np.array(corr, dtype=float)
    except (TypeError, ValueError):
        r = None
    if r is None or r.shape != (k, k):
        raise SpecError(f"{where}: correlation must be a {k} x {k} matrix (one row per parameter of {params})")
    if not np.all(np.isfinite(r)) or not np.allclose(np.diag(r), 1.0) or not np.allclose(r, r.T):
        raise SpecError(f"{where}: correlation must be symmetric with 1 on the diagonal")
    if np.any(np.abs(r - np.eye(k)) >= 1.0) or np.linalg.eigvalsh(r).min() <= 1e-10:
        raise SpecError(f"{where}: correlation of {params} is not positive definite")
    return FixedBlock(tuple(params), tuple(tuple(float(x) for x in row) for row in r))


def check_fixed_blocks(spec) -> None:
    """Each member exists, has an ETA with a fixed SD, is non-centred and in no other block."""
    seen = {p for block in spec.omega_blocks for p in block}
    for block in spec.fixed_omega_blocks:
        where = f"fixed OMEGA block {list(block.parameters)}"
        for p in block.parameters:
            par = spec.parameters.get(p)
            if par is None:
                raise SpecError(f"{where}: unknown parameter {p!r}")
            if not par.has_eta:
                raise SpecError(f"{where}: parameter {p} has no random effect (iiv = \"none\")")
            if par.omega_fixed is None:
                raise SpecError(f"{where}: parameter {p} needs omega_fixed (its SD); the block fixes the "
                                f"correlation, so the SDs are fixed too")
            if par.centered:
                raise SpecError(f"{where}: parameter {p} is centered; block members use the non-centred "
                                f"parameterisation (remove centered = true)")
            if p in seen:
                raise SpecError(f"parameter {p} appears in more than one OMEGA block")
            seen.add(p)
