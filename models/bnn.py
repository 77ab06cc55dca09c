"""Bayesian neural network classifier on the Wisconsin breast cancer data: 2,049 weights.

    h_n = tanh(W₁ᵀx_n + b₁),  y_n ~ Bernoulli(sigmoid(w₂ᵀh_n + b₂)),
    W₁ ~ N(0, I/30),  w₂ ~ N(0, I/64),  b₁ ~ N(0, I),  b₂ ~ N(0, 1),

one hidden layer of 64 tanh units on the 30 standardised features. The prior variance of each
layer's weights is 1 / fan-in, so pre-activations have unit prior scale (Neal 1996).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from . import logistic_regression

HIDDEN = 64


def model(X, y=None, *, hidden: int = HIDDEN):
    num_features = X.shape[1]
    W1 = numpyro.sample(
        "W1", dist.Normal(0.0, num_features**-0.5).expand([num_features, hidden]).to_event(2)
    )
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
    w2 = numpyro.sample("w2", dist.Normal(0.0, hidden**-0.5).expand([hidden]).to_event(1))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0))
    logits = jnp.tanh(X @ W1 + b1) @ w2 + b2
    numpyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=y)


load = logistic_regression.load
