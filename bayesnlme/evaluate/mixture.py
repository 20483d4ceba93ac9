"""Posterior membership of a ``[mixture]`` model's subjects in its components.

At each posterior draw the probability that subject ``i`` belongs to component ``k`` given its data is

    P(k | y_i, draw) = w_ik p(y_i | k, ETA_i) / sum_l w_il p(y_i | l, ETA_i),

from the builder's per-subject component log-likelihoods (:func:`bayesnlme.evaluate.predict.posterior_membership`);
the posterior membership probability is its mean over draws (Rao-Blackwellised: no membership is sampled).
Cost: one evaluation of the K component likelihoods per draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.predict import posterior_membership, thinned_draws


def mixture_membership(result, *, n_draws: int | None = None) -> pd.DataFrame:
    """Posterior probability of each subject's membership in each component.

    Parameters
    ----------
    result : FitResult
        A fit of a spec with a ``[mixture]`` table.
    n_draws : int, optional
        Posterior draws used (evenly thinned); default all.

    Returns
    -------
    pandas.DataFrame
        One row per subject: ``ID``, ``P1`` ... ``PK`` (posterior mean of the membership probability
        of each component; component 1 has the highest typical value of the mixed parameter) and
        ``component`` (the most probable one).

    Raises
    ------
    BayesNLMEInputError
        The fit's spec has no ``[mixture]``.

    Examples
    --------
    >>> table = mixture_membership(result)          # doctest: +SKIP
    >>> table[table["P2"] > 0.9]["ID"]               # doctest: +SKIP
    """
    if result.spec.mixture is None:
        raise BayesNLMEInputError("membership probabilities need a fit of a spec with a [mixture] table")
    _, draws = thinned_draws(result, n_draws)
    prob = posterior_membership(result.built, draws).mean(axis=0)   # (n_subjects, K)
    table = pd.DataFrame({"ID": [str(i) for i in result.data.ids]})
    for k in range(prob.shape[1]):
        table[f"P{k + 1}"] = prob[:, k]
    table["component"] = np.argmax(prob, axis=1) + 1
    return table
