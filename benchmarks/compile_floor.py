"""What XLA:CPU takes to compile the least natural-gradient program, against Adam's.

The issue's "≥ 2× less time including compilation" for full covariance asks vingd's compile +
run to 1 nat to be at most half of Adam's (compile + run to 1 nat). On small models Adam's run
to 1 nat is a fraction of its compile, so vingd's compile alone would have to be about half of
Adam's. This script compiles, on the same model and in one process (fresh JAX caches each):

- "Adam AutoMultivariateNormal": NumPyro SVI's `update` under `lax.scan` (what `vingd.compare`
  times);
- "gradient scan": a scan of 16 gradients of the log joint per step at fixed points, the part
  every method's program holds;
- "least NGD, stein" / "least NGD, hessian": a full-covariance natural-gradient step with
  nothing around it: 16 Gaussian draws through the precision's Cholesky factor, E[∇f] and the
  curvature (Stein's gradient-only estimate, or exact Hessians), the precision update and a
  Cholesky solve for the mean, under `lax.scan`, fixed ρ (no ELBO check, backoff, averaging);
- "vingd.fit": the default program (adaptive ρ with its check, backoff, Polyak averaging,
  growing draws).

    .venv/bin/python benchmarks/compile_floor.py [--models NAME ...] [--repeats R] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal
from numpyro.infer.util import initialize_model

import vingd
import vingd_models

HERE = Path(__file__).parent
MODELS = ("breast_cancer_logistic", "eight_schools-eight_schools_noncentered")
DRAWS, CHUNK, RHO = 16, 25, 0.5


def compile_seconds(fn, *args) -> float:
    jax.clear_caches()
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - start


def programs(model, args, kwargs):
    """name -> (function, its arguments) of each program above but vingd's."""
    setup = initialize_model(jax.random.PRNGKey(0), model, model_args=args, model_kwargs=kwargs)
    flat, unravel = ravel_pytree(setup.param_info.z)
    dim = flat.size

    def log_joint(z):
        return -setup.potential_fn(unravel(z))

    svi = SVI(model, AutoMultivariateNormal(model), optax.adam(1e-2), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), *args, **kwargs)

    def adam(state):
        return jax.lax.scan(lambda s, _: svi.update(s, *args, **kwargs), state, length=CHUNK)

    def gradients(z):
        def step(z, _):
            grads = jax.vmap(jax.grad(log_joint))(z + jnp.zeros((DRAWS, 1)))
            return z + 1e-3 * grads.mean(0), None

        return jax.lax.scan(step, z, length=CHUNK)[0]

    def least_ngd(curvature):
        def run(loc, precision, key):
            def step(carry, key):
                loc, precision = carry
                factor = jnp.linalg.cholesky(precision)
                noise = jax.random.normal(key, (DRAWS, dim))
                z = loc + jax.scipy.linalg.solve_triangular(factor.T, noise.T).T
                grads = jax.vmap(jax.grad(log_joint))(z)
                if curvature == "hessian":
                    hessian = jax.vmap(jax.hessian(log_joint))(z).mean(0)
                else:  # Stein: E[Λ(z − m) ∇f(z)ᵀ], symmetrised
                    hessian = ((z - loc) @ precision).T @ grads / DRAWS
                    hessian = (hessian + hessian.T) / 2
                precision = (1 - RHO) * precision - RHO * hessian
                factor = jnp.linalg.cholesky(precision)
                loc = loc + RHO * jax.scipy.linalg.cho_solve((factor, True), grads.mean(0))
                return (loc, precision), log_joint(loc)

            return jax.lax.scan(step, (loc, precision), jax.random.split(key, CHUNK))

        return run, (flat, jnp.eye(dim), jax.random.PRNGKey(0))

    return {
        "Adam AutoMultivariateNormal": (adam, (state,)),
        "gradient scan": (gradients, (flat,)),
        "least NGD, stein": least_ngd("stein"),
        "least NGD, hessian": least_ngd("hessian"),
    }


def vingd_compile_seconds(model, args, kwargs) -> float:
    vingd.clear_cache()
    jax.clear_caches()
    guide = vingd.AutoNaturalMVN(model)
    return vingd.fit(
        model, *args, guide=guide, num_steps=25, progress_bar=False, **kwargs
    ).compile_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "compile_floor.md")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        example = vingd_models.get(name)
        model_args, model_kwargs = example.load()
        seconds = {}
        for label, (fn, fn_args) in programs(example.model, model_args, model_kwargs).items():
            seconds[label] = [compile_seconds(fn, *fn_args) for _ in range(args.repeats)]
        seconds["vingd.fit (default)"] = [
            vingd_compile_seconds(example.model, model_args, model_kwargs)
            for _ in range(args.repeats)
        ]
        adam = statistics.median(seconds["Adam AutoMultivariateNormal"])
        for label, values in seconds.items():
            median = statistics.median(values)
            rows.append(f"| {name} | {label} | {median:.2f} | {median / adam:.2f}× |")
            print(rows[-1], flush=True)
    report = (
        "# Compile seconds: the least natural-gradient program against Adam's\n\n"
        f"Machine: {jax.devices()[0].device_kind}; `make bench-compile`; median of {args.repeats} "
        "compiles, fresh JAX caches each; see benchmarks/compile_floor.py for what each "
        "program holds.\n\n"
        "| model | program | compile s | × Adam's |\n|---|---|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
