"""Write the notebooks from the cells below, execute them and save them with their outputs.

    python notebooks/build.py                 # all notebooks
    python notebooks/build.py 01_quickstart   # some of them
    python notebooks/build.py --out DIR       # write the executed notebooks elsewhere

Each notebook is a list of Markdown and code cells; the sources here are the notebooks' sources
(`tests/test_notebooks.py` checks that the committed `.ipynb` files match them and re-executes
them). The kernel is always this interpreter (`sys.executable`), whatever Jupyter kernels are
installed elsewhere. `make lint` checks the notebooks too, so write code cells as `ruff format`
would at line length 100, in lines short enough to fit this file's 8-space indent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
#: Seconds any one cell may run before execution fails.
CELL_TIMEOUT = 300
KERNEL = "vingd-python"
#: What a committed notebook asks Jupyter for: the default Python kernel.
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


# --------------------------------------------------------------------------------------------
QUICKSTART = [
    md(
        """
        # Quick start: fit a NumPyro model with vingd

        vingd fits a Gaussian q(z) to the posterior of any NumPyro model whose latents are
        continuous. The Gaussian is held in its natural parameters θ = (Λm, −½Λ), and each step
        moves θ along the natural gradient of the ELBO, θ ← θ + ρ ∇_μ ELBO: a Newton-like step,
        so a fit takes tens of steps rather than thousands.

        This notebook fits Bayesian logistic regression to the Wisconsin breast-cancer data
        (569 tumours, 30 standardised features, bundled in `models/data/`), then draws from the
        fit, predicts, and summarises it with ArviZ.
        """
    ),
    code(
        """
        %matplotlib inline
        import inspect

        import arviz as az
        import jax
        import matplotlib.pyplot as plt
        import numpy as np
        import numpyro

        import vingd
        import vingd_models
        from vingd_models import logistic_regression
        """
    ),
    md(
        """
        ## The model and the data

        `vingd_models.get(name)` returns a registered example: the model function, a loader for its
        data and a one-line description.
        """
    ),
    code(
        """
        example = vingd_models.get("breast_cancer_logistic")
        print(example.description, end="\\n\\n")
        print(inspect.getsource(example.model))
        (X, y), _ = example.load()
        _, _, features = logistic_regression.load_arrays()
        print(f"X {X.shape}, y {y.shape}: {int(y.sum())} benign, {int((1 - y).sum())} malignant")
        """
    ),
    md(
        """
        ## Fit

        `AutoNaturalMVN` is a full-covariance Gaussian over all 31 unconstrained latents
        (`AutoNaturalNormal` is the mean-field one). `vingd.fit` adapts the step size ρ, and
        once the ELBO stops improving averages θ over windows of steps until the average's
        Monte Carlo error is small (`fit.mcse`, in q's sds), and returns the average.
        Compilation is timed apart from the run.
        """
    ),
    code(
        """
        guide = vingd.AutoNaturalMVN(example.model)
        key = jax.random.PRNGKey(0)
        fit = vingd.fit(example.model, X, y, guide=guide, rng_key=key, progress_bar=False)
        print(f"{fit.num_steps} steps, converged: {fit.converged}, estimator: {fit.estimator}")
        print(f"compile {fit.compile_seconds:.2f} s, run {fit.run_seconds:.3f} s")
        elbo, se = vingd.elbo(example.model, guide, fit.params, X, y)
        print(f"ELBO {elbo:.2f} ± {se:.2f} (2,000 draws)")
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(np.arange(1, fit.num_steps + 1), fit.losses)
        ax.set(xlabel="step", ylabel="loss = −ELBO estimate", yscale="log")
        ax.set_title("vingd.fit on breast_cancer_logistic: the loss per step (16 draws)")
        ax.grid(alpha=0.3, which="both");
        """
    ),
    md(
        """
        `fit.params` has the same format as `numpyro.infer.SVI`'s: a dict of natural-parameter
        NamedTuples. The guide turns it into draws, quantiles and the posterior itself.
        """
    ),
    code(
        """
        print({name: type(value).__name__ for name, value in fit.params.items()})
        draws = guide.sample_posterior(jax.random.PRNGKey(1), fit.params, sample_shape=(1000,))
        print({site: value.shape for site, value in draws.items()})
        quantiles = guide.quantiles(fit.params, [0.05, 0.5, 0.95])
        print("w[0] 5%, 50%, 95%:", np.asarray(quantiles["w"][:, 0]).round(2))
        q = guide.get_posterior(fit.params)
        print(f"q(z): {type(q).__name__} over {q.event_shape[0]} unconstrained latents")
        """
    ),
    md(
        """
        ## Predict

        The guide plugs into `numpyro.infer.Predictive` like any numpyro guide. The mean of the
        posterior-predictive draws of y is each tumour's predictive probability of being benign.
        """
    ),
    code(
        """
        predictive = numpyro.infer.Predictive(
            example.model, guide=guide, params=fit.params, num_samples=1000
        )
        probability = predictive(jax.random.PRNGKey(2), X)["y"].mean(0)
        print(f"in-sample accuracy {np.mean((probability > 0.5) == y):.3f}")
        """
    ),
    md(
        """
        ## Summarise with ArviZ

        `vingd.to_datatree` draws from the fit, runs every draw through the model, and builds an
        ArviZ `DataTree` (posterior, posterior predictive, pointwise log likelihood, observed
        data, and the fit's ELBO trace in `sample_stats`). Its attributes hold the ELBO and the
        PSIS k̂ of the fit (see `04_diagnostics`). Naming the event dimension of `w` labels the
        coefficients by feature.
        """
    ),
    code(
        """
        tree = vingd.to_datatree(
            example.model,
            guide,
            fit,
            X,
            y,
            rng_key=jax.random.PRNGKey(3),
            coords={"feature": features},
            event_dims={"w": ["feature"]},
        )
        print({name: tree.attrs[name] for name in ("elbo", "elbo_se", "psis_khat", "psis_verdict")})
        az.summary(tree, kind="stats").head(10)
        """
    ),
    md(
        """
        Next: `02_ngd_vs_adam` compares vingd with NumPyro's SVI + Adam, `03_exponential_families`
        shows the identities behind the step, `04_diagnostics` judges a fit against a
        gold-standard posterior, and `05_bnn` fits a Bayesian neural network.
        """
    ),
]

# --------------------------------------------------------------------------------------------
NGD_VS_ADAM = [
    md(
        """
        # vingd against SVI + Adam

        `vingd.compare` fits one model with several methods from the same starting point (the
        prior median) and the same random key, and scores each fit the same way: the final ELBO
        from 1,000 draws, the PSIS k̂, and the steps and wall seconds (compilation excluded)
        until the ELBO trace, smoothed, comes within 1 nat of the best final ELBO of the methods
        with its guide family (a mean-field Gaussian has an optimum of its own, below
        full covariance's).

        The methods: vingd's full-covariance and mean-field Gaussians with adaptive ρ (at most
        500 steps; they stop earlier once converged), and NumPyro's `AutoMultivariateNormal` and
        `AutoNormal` under SVI with Adam (learning rate 0.01, 3,000 steps, `Trace_ELBO` with one
        particle). The Adam budgets are kept small so that this notebook runs in well under a
        minute; `make bench` runs longer ones and more learning rates.
        """
    ),
    code(
        """
        %matplotlib inline
        import jax
        from IPython.display import Markdown, display

        import vingd
        import vingd_models
        from vingd import plots
        from vingd.compare import Method

        METHODS = [
            Method("vingd", "mvn", num_steps=500),
            Method("vingd", "meanfield", num_steps=500),
            Method("adam", "mvn", num_steps=3000, step_size=1e-2),
            Method("adam", "meanfield", num_steps=3000, step_size=1e-2),
        ]


        def run(name):
            example = vingd_models.get(name)
            args, kwargs = example.load()
            reference = example.reference() if example.reference is not None else None
            print(example.description)
            return vingd.compare(
                example.model,
                *args,
                methods=METHODS,
                reference=reference,
                rng_key=jax.random.PRNGKey(0),
                num_draws=1000,
                **kwargs,
            )


        def report(comparison):
            display(Markdown(comparison.to_markdown()))
            for result in comparison.ranking:
                steps, seconds = result.steps_to_best, result.seconds_to_best
                reached = "never" if steps is None else f"after {steps} steps, {seconds:.3f} s"
                print(f"{result.name:45s} within 1 nat: {reached}")
        """
    ),
    md(
        """
        ## Logistic regression, breast cancer (31 latents)

        A well-conditioned posterior, close to Gaussian.
        """
    ),
    code(
        """
        cancer = run("breast_cancer_logistic")
        report(cancer)
        """
    ),
    md(
        """
        Each curve is the gap to the best final ELBO of its guide family, on log scales, against
        steps (left) and wall seconds (right). The dotted line is 1 nat.
        """
    ),
    code(
        """
        plots.plot_traces(cancer.traces, cancer.family_best)
        """
    ),
    md(
        """
        ## Diamond prices (posteriordb `diamonds-diamonds`, 26 latents)

        A log-price regression on 24 highly correlated predictors: the posterior is a long,
        thin ellipsoid. First-order methods crawl along it; the natural-gradient step uses the
        curvature and does not. Because posteriordb ships gold-standard Stan draws, the table
        adds each fit's largest standardised mean error, |E_q[z] − E_ref[z]| / sd_ref(z), and the
        range of its sd ratios sd_q(z) / sd_ref(z), over all latents.
        """
    ),
    code(
        """
        diamonds = run("diamonds-diamonds")
        report(diamonds)
        """
    ),
    code(
        """
        plots.plot_traces(diamonds.traces, diamonds.family_best)
        """
    ),
    md(
        """
        ## Reading the results

        - **Steps.** vingd's full-covariance fit reaches the best ELBO within tens of steps on
          both models; each of its steps costs more than an Adam step (an exact Hessian of the
          log joint per draw), but far fewer are needed.
        - **Budget.** Where an Adam fit never comes within 1 nat, 3,000 steps were not enough
          for it: on the diamonds posterior both Adam fits stop hundreds of nats short, with
          mean errors of many posterior sds. More steps, or a tuned learning rate, would get
          further; `make bench` gives Adam longer runs.
        - **Family.** A mean-field Gaussian cannot represent correlations, so its ELBO stays
          below the full-covariance optimum whichever optimiser fits it, and its sd ratios fall
          far below 1 on correlated posteriors like the diamonds regression.
        - **k̂.** The PSIS k̂ says how far q is from the posterior: below 0.5 (good) q's draws
          can be trusted as they are; above 0.7 they cannot (see `04_diagnostics`).
        """
    ),
]

# --------------------------------------------------------------------------------------------
EXPONENTIAL_FAMILIES = [
    md(
        r"""
        # Exponential families: the identities behind the step

        A variational family in vingd is an exponential family
        q(z | θ) = h(z) exp(⟨θ, T(z)⟩ − A(θ)) with natural parameters θ, sufficient statistics
        T and log partition A. Everything the optimiser needs follows from A:

        - mean parameters μ = E_q[T(z)] = ∇A(θ);
        - Fisher information F(θ) = ∇²A(θ) = Cov_q[T(z)] = ∂μ/∂θ;
        - hence the natural gradient F⁻¹∇_θ L is the gradient in mean parameters, ∇_μ L, and the
          step is θ ← θ + ρ ∇_μ ELBO. For a conjugate model with ρ = 1 it is exact in one step.

        This notebook checks each identity numerically on vingd's Gaussian families
        (`vingd.families`), in float64, then watches the one-step update solve a conjugate
        regression. (Families with native support, Gamma, Beta and Dirichlet, are being added;
        the same identities hold for them.)
        """
    ),
    code(
        """
        import jax
        import jax.numpy as jnp
        import numpy as np
        import numpyro
        from jax.flatten_util import ravel_pytree
        from numpyro.distributions.kl import kl_divergence
        from numpyro.infer import SVI

        import vingd
        import vingd_models
        from vingd.families import DiagonalNormal, MultivariateNormal, tree_vdot

        numpyro.enable_x64()

        mvn = MultivariateNormal()
        theta = mvn.from_loc_precision(jnp.array([1.0, -0.5]), jnp.array([[2.0, 0.6], [0.6, 1.0]]))
        print(theta)
        """
    ),
    md(
        """
        ## μ = ∇A(θ) = E_q[T(z)]

        For the Gaussian, T(z) = (z, zzᵀ) and μ = (m, Σ + mmᵀ). The family's closed form, the
        autodiff gradient of its log partition and a Monte Carlo average of T over 200,000 draws
        should agree (the last within Monte Carlo error).
        """
    ),
    code(
        """
        mean = mvn.natural_to_mean(theta)
        grad_A = jax.grad(mvn.log_partition)(theta)
        z = mvn.sample(jax.random.PRNGKey(0), theta, (200_000,))
        T = jax.vmap(lambda x: ravel_pytree(mvn.sufficient_statistics(x))[0])(z)

        flat_mean = ravel_pytree(mean)[0]
        print("closed form μ   ", np.round(flat_mean, 4))
        print("∇A(θ)           ", np.round(ravel_pytree(grad_A)[0], 4))
        print("Monte Carlo E[T]", np.round(T.mean(0), 4))
        gap = jnp.max(jnp.abs(flat_mean - ravel_pytree(grad_A)[0]))
        print(f"max |closed form − ∇A|: {gap:.1e}")
        z_score = (T.mean(0) - flat_mean) / (T.std(0) / np.sqrt(len(T)))
        print("Monte Carlo error in standard errors:", np.round(z_score, 2))
        """
    ),
    md(
        """
        ## F = ∇²A(θ) = Cov_q[T(z)]

        The Hessian of the log partition in the flattened θ = (η₁, vec η₂) is the covariance of
        the flattened T(z) = (z, vec zzᵀ). The Monte Carlo covariance's standard errors come from
        20 batches of 10,000 draws.
        """
    ),
    code(
        """
        flat_theta, unravel = ravel_pytree(theta)
        fisher = jax.hessian(lambda t: mvn.log_partition(unravel(t)))(flat_theta)
        batches = np.stack([np.cov(b.T) for b in np.split(np.asarray(T), 20)])
        covariance, se = batches.mean(0), batches.std(0, ddof=1) / np.sqrt(20)
        np.set_printoptions(precision=3, suppress=True)
        print("∇²A(θ):\\n", np.asarray(fisher))
        print("Cov[T] (Monte Carlo):\\n", covariance)
        print(f"largest |∇²A − Cov[T]| / se: {np.max(np.abs(fisher - covariance) / se):.2f}")
        """
    ),
    md(
        """
        ## Round trips, entropy and KL

        `mean_to_natural` inverts `natural_to_mean`; the entropy is A(θ) − ⟨θ, μ⟩ and the KL
        divergence is the Bregman divergence of A. Both families are checked against NumPyro's
        own distributions.
        """
    ),
    code(
        """
        diag = DiagonalNormal()
        theta_diag = diag.from_loc_scale(jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, 1.0, 2.0]))
        other_diag = diag.from_loc_scale(jnp.array([0.0, 0.0, 1.0]), jnp.array([1.0, 0.7, 1.5]))
        other = mvn.from_loc_precision(jnp.array([0.0, 1.0]), jnp.array([[1.0, 0.2], [0.2, 3.0]]))

        for family, a, b in ((mvn, theta, other), (diag, theta_diag, other_diag)):
            name = type(family).__name__
            round_trip = family.mean_to_natural(family.natural_to_mean(a))
            gap = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(round_trip, a, strict=True))
            derived = family.log_partition(a) - tree_vdot(a, family.natural_to_mean(a))
            print(f"{name}: max |θ − θ(μ(θ))| = {gap:.1e}")
            print(
                f"  entropy: closed form {float(family.entropy(a)):.6f}, "
                f"A − ⟨θ, μ⟩ {float(derived):.6f}, "
                f"numpyro {float(family.to_numpyro(a).entropy()):.6f}"
            )
            print(
                f"  KL: Bregman {float(family.kl_divergence(a, b)):.6f}, "
                f"numpyro {float(kl_divergence(family.to_numpyro(a), family.to_numpyro(b))):.6f}"
            )
        """
    ),
    md(
        r"""
        ## The natural gradient is the gradient in mean parameters

        Take a Gaussian log likelihood for one coordinate, f(z) = −c(z − a)². Its expectation
        is linear in the mean parameters: E_q[f] = −c(μ₂ − 2aμ₁ + a²), so ∇_μ E_q[f] = (2ac, −c),
        exactly the natural parameter of the likelihood term. Computing F⁻¹∇_θ E_q[f] three
        ways (an explicit solve with F = ∇²A, `family.natural_gradient`, which takes a
        vector–Jacobian product through θ(μ) and never forms F, and the closed form) gives the
        same vector.
        """
    ),
    code(
        """
        a, c = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.5, 2.0, 1.0])


        def expected_f(natural):
            mu1, mu2 = diag.natural_to_mean(natural)
            return jnp.sum(-c * (mu2 - 2 * a * mu1 + a**2))


        grad_theta = jax.grad(expected_f)(theta_diag)
        flat, unravel_diag = ravel_pytree(theta_diag)
        fisher_diag = jax.hessian(lambda t: diag.log_partition(unravel_diag(t)))(flat)
        solved = jnp.linalg.solve(fisher_diag, ravel_pytree(grad_theta)[0])
        vjp = ravel_pytree(diag.natural_gradient(theta_diag, grad_theta))[0]
        closed_form = jnp.concatenate([2 * a * c, -c])
        print("F⁻¹ ∇_θ (solve)          ", np.asarray(solved))
        print("natural_gradient (VJP)   ", np.asarray(vjp))
        print("∇_μ E[f] (closed form)   ", np.asarray(closed_form))
        """
    ),
    md(
        r"""
        ## A conjugate model in one step

        With ∇_μ E_q[log p(y, z)] equal to the natural parameter of prior plus likelihood, the
        step with ρ = 1, θ ← (1 − ρ)θ + ρ∇_μ E_q[log p(y, z)], lands on the exact posterior from
        any start. `statecrime_linear` is a Bayesian linear regression with known noise on the
        2009 US state murder rates (51 × 5), whose exact posterior is known in closed form.
        """
    ),
    code(
        """
        example = vingd_models.get("statecrime_linear")
        print(example.description)
        args, kwargs = example.load()
        exact = example.reference()  # vingd_models.references.GaussianPosterior over (w, b)

        guide = vingd.AutoNaturalMVN(example.model)
        one_step = vingd.fit(
            example.model,
            *args,
            guide=guide,
            num_steps=1,
            step_size=1.0,
            rng_key=jax.random.PRNGKey(0),
            progress_bar=False,
            **kwargs,
        )
        q = guide.get_posterior(one_step.params)
        print(f"steps taken: {one_step.num_steps}")
        print("posterior mean (exact):", exact.flat_mean)
        print("q mean after one step: ", np.asarray(q.mean))
        print(
            f"max |mean error| {np.max(np.abs(q.mean - exact.flat_mean)):.1e}, "
            f"max |covariance error| {np.max(np.abs(q.covariance_matrix - exact.cov)):.1e}"
        )
        """
    ),
    md(
        """
        The same step through NumPyro's own `SVI`: `vingd.NGD(1.0)` as the optimiser and
        `vingd.NaturalELBO()` as the loss, whose gradient carries the estimator's natural gradient.
        One `svi.update` from the guide's initial state (prior median, scale 0.1).
        """
    ),
    code(
        """
        svi_guide = vingd.AutoNaturalMVN(example.model)
        svi = SVI(example.model, svi_guide, vingd.NGD(1.0), vingd.NaturalELBO())
        state = svi.init(jax.random.PRNGKey(0), *args, **kwargs)
        start = svi_guide.get_posterior(svi.get_params(state))
        state, loss = svi.update(state, *args, **kwargs)
        q_svi = svi_guide.get_posterior(svi.get_params(state))
        print(f"before: max |mean error| {np.max(np.abs(start.mean - exact.flat_mean)):.2f}")
        print(
            f"after one svi.update: max |mean error| "
            f"{np.max(np.abs(q_svi.mean - exact.flat_mean)):.1e}, max |covariance error| "
            f"{np.max(np.abs(q_svi.covariance_matrix - exact.cov)):.1e}"
        )
        """
    ),
    md(
        """
        The mean-field guide reaches its own optimum in one step too: for a Gaussian target the
        best diagonal Gaussian has the exact mean and precision diag(Λ), the diagonal of the
        posterior precision (so its sds are smaller than the posterior's). `fit`'s mean-field
        step takes the Newton step in the mean and the natural-gradient step in the precision.
        """
    ),
    code(
        """
        mean_field = vingd.AutoNaturalNormal(example.model)
        mf = vingd.fit(
            example.model,
            *args,
            guide=mean_field,
            num_steps=1,
            step_size=1.0,
            rng_key=jax.random.PRNGKey(0),
            progress_bar=False,
            **kwargs,
        )
        # the mean-field optimum: the exact mean, sd 1/sqrt(diag Λ), per site
        optimum_sd = exact.unravel(1 / np.sqrt(np.diag(np.linalg.inv(exact.cov))))
        for site in exact.mean:
            loc, scale = diag.loc_scale(mf.params[f"{site}_auto_natural"])
            print(
                f"{site}: max |mean error| {np.max(np.abs(loc - exact.mean[site])):.1e}, "
                f"max |sd − 1/sqrt(diag Λ)| {np.max(np.abs(scale - optimum_sd[site])):.1e}, "
                f"sd / posterior sd {np.round(scale / exact.sd[site], 2)}"
            )
        """
    ),
]

# --------------------------------------------------------------------------------------------
DIAGNOSTICS = [
    md(
        """
        # Diagnostics: is the fit good enough?

        A variational fit always returns *something*. This notebook checks one three ways:

        1. against a gold-standard posterior: eight schools, whose posteriordb reference is
           10,000 Stan NUTS draws (`vingd.compare` with a reference, `vingd.plots.plot_forest`,
           and ArviZ's forest plot of the `DataTree`s);
        2. with no reference at all: the PSIS k̂ of the importance ratios p(y, z)/q(z)
           (Yao, Vehtari, Simpson & Gelman 2018), and importance resampling;
        3. for prediction: PSIS-LOO corrected for the approximate posterior, on the
           breast-cancer logistic regression.
        """
    ),
    code(
        """
        %matplotlib inline
        import warnings

        import arviz as az
        import jax
        import numpy as np
        import pandas as pd
        from IPython.display import Markdown, display

        import vingd
        import vingd_models
        from vingd import plots
        from vingd.compare import Method
        from vingd_models.posteriordb import reference_chains

        example = vingd_models.get("eight_schools-eight_schools_noncentered")
        print(example.description)
        args, kwargs = example.load()
        reference = example.reference()  # site -> (10000, *shape) Stan draws
        print({site: draws.shape for site, draws in reference.items()})
        """
    ),
    md(
        """
        ## Against the reference

        The model is non-centred (θ_j = μ + τ θ̃_j) with τ ~ half-Cauchy(0, 5), so the fits are
        Gaussians in (θ̃, μ, log τ). The table scores vingd's two guides and SVI + Adam with a
        full-covariance guide.
        """
    ),
    code(
        """
        methods = [
            Method("vingd", "mvn", num_steps=500),
            Method("vingd", "meanfield", num_steps=500),
            Method("adam", "mvn", num_steps=2000, step_size=1e-2),
        ]
        schools = vingd.compare(
            example.model,
            *args,
            methods=methods,
            reference=reference,
            rng_key=jax.random.PRNGKey(0),
            num_draws=1000,
            **kwargs,
        )
        display(Markdown(schools.to_markdown()))
        for result in schools.results:
            ratios = {site: np.min(ratio) for site, ratio in result.sd_ratio.items()}
            site = min(ratios, key=ratios.get)
            print(f"{result.name:45s} narrowest: {site} (sd ratio {ratios[site]:.2f})")
        """
    ),
    md(
        """
        In the forest plot each latent is in the reference's standard units: the marker is the
        standardised mean error (E_q − E_ref)/sd_ref and the bar spans ± sd_q/sd_ref, so a
        perfect fit sits on 0 with bars reaching the shaded band's edges.
        """
    ),
    code(
        """
        plots.plot_forest(schools)
        """
    ),
    md(
        """
        τ is where the fits differ. Its posterior is skewed (a half-Cauchy prior and eight noisy
        schools), a Gaussian in log τ matches it only roughly, and the sd ratios show how much
        of its spread each fit keeps; the θ_j inherit τ's error through θ_j = μ + τ θ̃_j.
        """
    ),
    md(
        """
        ## DataTrees and ArviZ

        `vingd.to_datatree` accepts any fitted guide with its params, including the ones
        `compare` returns. Naming the school dimension lets ArviZ line the fits up with the
        reference draws in its own forest plot (the 10 Stan chains are read as one chain and
        thinned to 1,000 draws, as many as each fit has).
        """
    ),
    code(
        """
        school = {"theta": ["school"], "theta_trans": ["school"]}
        trees = {
            result.name: vingd.to_datatree(
                example.model,
                result.guide,
                result.params,
                *args,
                rng_key=jax.random.PRNGKey(1),
                event_dims=school,
                **kwargs,
            )
            for result in schools.results
        }
        stan = az.from_dict(
            {
                "posterior": {
                    site: draws.reshape(1, -1, *draws.shape[2:])[:, ::10]
                    for site, draws in reference_chains(example.name).items()
                }
            },
            dims=school,
        )
        fits = {
            "Stan NUTS (posteriordb)": stan,
            **{name.split(" (")[0]: tree for name, tree in trees.items()},
        }
        forest = az.plot_forest(fits, var_names=["mu", "tau", "theta"], backend="matplotlib")
        forest.add_legend("model");
        """
    ),
    code(
        """
        summaries = {
            name: az.summary(tree, var_names=["mu", "tau"], kind="stats")[["mean", "sd"]]
            for name, tree in fits.items()
        }
        pd.concat(summaries, axis=1).astype(float).round(2)
        """
    ),
    md(
        """
        ## PSIS k̂ and importance resampling

        Without a reference, the draws z_s ~ q can still be weighted by p(y, z_s)/q(z_s). The
        Pareto shape k̂ of those weights' tail says whether q is usable: below 0.5 good, below 0.7
        usable after reweighting, above unreliable. `vingd.psis_diagnostic` keeps the smoothed
        weights, so the draws can be resampled toward the posterior. k̂ is an estimate too, from
        the tail of a few draws: these 2,000 draws need not reproduce the table's value from 1,000
        others, and values near 0.7 deserve more draws. When k̂ flags a vingd fit, more draws per
        step (`vingd.fit(..., num_samples=64)`) reduce the Monte Carlo noise in its steps.
        """
    ),
    code(
        """
        for result in schools.results:
            psis = vingd.psis_diagnostic(
                example.model,
                result.guide,
                result.params,
                *args,
                num_samples=2000,
                rng_key=jax.random.PRNGKey(2),
                **kwargs,
            )
            resampled = psis.resample(jax.random.PRNGKey(3))
            print(
                f"{result.name}\\n  k̂ {psis.khat:.2f} ({psis.verdict}), "
                f"ESS {psis.ess:.0f} of 2000; E[τ]: q {psis.draws['tau'].mean():.2f}, "
                f"resampled {resampled['tau'].mean():.2f}, Stan {reference['tau'].mean():.2f}"
            )
        """
    ),
    md(
        """
        ## Leave-one-out cross-validation

        LOO needs a pointwise log likelihood: `vingd.to_datatree` scores each element of an
        observed site whose likelihood factorises (eight schools' `.to_event(1)` vector counts
        as eight observations). With only eight schools, though, each one held out moves the
        posterior a lot, so this part fits the breast-cancer logistic regression (569
        observations). `vingd.to_datatree` also stores log p(y, z) and log q(z) per draw in
        `sample_stats`, which is what `arviz.loo_approximate_posterior` needs to correct PSIS-LOO
        for draws from q rather than from the posterior (Magnusson et al. 2019). Its pointwise
        k̂ says, per observation, whether the estimate holds. ArviZ's warning about large k̂ is
        silenced here because the table reports the k̂s.
        """
    ),
    code(
        """
        cancer = vingd_models.get("breast_cancer_logistic")
        (X, y), _ = cancer.load()
        rows = []
        for guide in (vingd.AutoNaturalMVN(cancer.model), vingd.AutoNaturalNormal(cancer.model)):
            fit = vingd.fit(
                cancer.model, X, y, guide=guide, rng_key=jax.random.PRNGKey(0), progress_bar=False
            )
            tree = vingd.to_datatree(cancer.model, guide, fit, X, y, rng_key=jax.random.PRNGKey(1))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Estimated shape parameter")
                loo = az.loo_approximate_posterior(
                    tree,
                    log_p=tree.sample_stats.log_p,
                    log_q=tree.sample_stats.log_q,
                    pointwise=True,
                )
            k = loo.pareto_k.values
            rows.append(
                f"| {type(guide).__name__} | {tree.attrs['psis_khat']:.2f} | "
                f"{loo.elpd:.1f} ± {loo.se:.1f} | {loo.p:.1f} | {np.mean(k <= loo.good_k):.0%} |"
            )
        display(
            Markdown(
                "| guide | PSIS k̂ (joint) | elpd_loo ± se | p_loo | observations with good k̂ |\\n"
                "|---|---:|---:|---:|---:|\\n" + "\\n".join(rows)
            )
        )
        """
    ),
    md(
        """
        The full-covariance fit's joint k̂ is low enough for its draws to be reweighted, and
        almost every pointwise k̂ is good, so its elpd_loo can be trusted. The mean-field fit's
        joint k̂ is far above 0.7: its importance weights, and with them its corrected LOO,
        are unreliable, however plausible the elpd looks. The k̂s, not the ELBO, say which fit
        to believe.
        """
    ),
]

# --------------------------------------------------------------------------------------------
BNN = [
    md(
        """
        # A Bayesian neural network with predictive uncertainty

        `breast_cancer_bnn` is a one-hidden-layer classifier, 30 → 64 tanh units → 1, on the
        breast-cancer features: 2,049 weights with N(0, 1/fan-in) priors. A full-covariance
        Gaussian would need 2 million precision entries, so the guides are mean-field
        (`AutoNaturalNormal`) and a precision of rank 20 plus a diagonal
        (`vingd.AutoNaturalLowRankMVN`, SLANG's projected step, O(d·k²) per step). `vingd.fit`
        estimates their curvature with the generalised Gauss–Newton (`estimator="ggn"`, the
        default above 100 latents): Σₙ pₙ(1 − pₙ)(∇ logitₙ)², never indefinite, from one
        backward pass with a random sign per tumour.

        The network is fitted on 400 tumours and judged on the other 169, against the Bayesian
        logistic regression fitted on the same split.
        """
    ),
    code(
        """
        %matplotlib inline
        import jax
        import matplotlib.pyplot as plt
        import numpy as np
        from numpyro import handlers

        import vingd
        import vingd_models

        bnn = vingd_models.get("breast_cancer_bnn")
        linear = vingd_models.get("breast_cancer_logistic")
        print(bnn.description)
        (X, y), _ = bnn.load()
        order = np.random.default_rng(0).permutation(len(y))
        train, test = order[:400], order[400:]
        print(f"train {len(train)}, test {len(test)}; benign share in test {y[test].mean():.2f}")
        """
    ),
    code(
        """
        guide = vingd.AutoNaturalNormal(bnn.model)
        fit = vingd.fit(
            bnn.model,
            X[train],
            y[train],
            guide=guide,
            num_steps=500,
            rng_key=jax.random.PRNGKey(0),
            progress_bar=False,
        )
        print(
            f"{fit.num_steps} steps, converged: {fit.converged}, estimator: {fit.estimator}; "
            f"compile {fit.compile_seconds:.1f} s, run {fit.run_seconds:.2f} s"
        )

        linear_guide = vingd.AutoNaturalMVN(linear.model)
        linear_fit = vingd.fit(
            linear.model,
            X[train],
            y[train],
            guide=linear_guide,
            rng_key=jax.random.PRNGKey(0),
            progress_bar=False,
        )
        print(f"logistic regression: {linear_fit.num_steps} steps")

        low_rank_guide = vingd.AutoNaturalLowRankMVN(bnn.model, rank=20)
        low_rank_fit = vingd.fit(
            bnn.model,
            X[train],
            y[train],
            guide=low_rank_guide,
            rng_key=jax.random.PRNGKey(0),
            progress_bar=False,
        )
        for name, g, f in (("mean-field", guide, fit), ("rank 20", low_rank_guide, low_rank_fit)):
            value, se = vingd.elbo(bnn.model, g, f.params, X[train], y[train])
            print(f"BNN {name:10s} {f.num_steps} steps, ELBO {value:.1f} ± {se:.1f}")

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(np.arange(1, fit.num_steps + 1), fit.losses)
        ax.set(xlabel="step", ylabel="loss = −ELBO estimate", yscale="log")
        ax.set_title("BNN, mean-field: the loss per step")
        ax.grid(alpha=0.3, which="both");
        """
    ),
    md(
        """
        ## Predictive probabilities

        For each posterior draw of the weights, the model's Bernoulli gives p_s(x), the
        probability that tumour x is benign. Their mean over draws is the posterior predictive
        probability; their spread is the network's uncertainty about it. The probabilities are
        read off the model's own `y` site (a NumPyro trace with the draws substituted), so no
        part of the network is re-implemented here.
        """
    ),
    code(
        """
        def probabilities(example, guide, params, X, key):
            draws = guide.sample_posterior(key, params, sample_shape=(1000,))

            def one(draw):
                model = handlers.substitute(handlers.seed(example.model, 0), draw)
                return handlers.trace(model).get_trace(X)["y"]["fn"].mean

            return np.asarray(jax.vmap(one)(draws))


        key = jax.random.PRNGKey(1)
        p_bnn = probabilities(bnn, guide, fit.params, X[test], key)
        p_low_rank = probabilities(bnn, low_rank_guide, low_rank_fit.params, X[test], key)
        p_linear = probabilities(linear, linear_guide, linear_fit.params, X[test], key)
        y_test = np.asarray(y[test])
        scores = (
            ("BNN (mean-field)", p_bnn),
            ("BNN (rank 20)", p_low_rank),
            ("logistic regression", p_linear),
        )
        for name, p in scores:
            mean = p.mean(0)
            log_score = np.mean(np.log(np.where(y_test == 1, mean, 1 - mean)))
            print(
                f"{name:20s} test accuracy {np.mean((mean > 0.5) == y_test):.3f}, "
                f"mean log predictive density {log_score:.3f}"
            )
        """
    ),
    md(
        """
        The features separate the two classes almost linearly, and 400 tumours do not pin down
        2,049 weights: on held-out log score the network does not beat the logistic regression
        here. It is here to show a fit at 2,049 latents and what its uncertainty looks like.

        Left: the predictive probabilities on the test set, by true class. Middle: calibration,
        the share of benign tumours among those given a probability in each bin (the diagonal
        is perfect calibration; marker area grows with the bin's count). Right: the spread of
        p_s(x) over weight draws against the predictive probability: the network is most
        uncertain about the tumours it places near 0.5.
        """
    ),
    code(
        """
        mean, spread = p_bnn.mean(0), p_bnn.std(0)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
        hist, calibration, uncertainty = axes
        bins = np.linspace(0, 1, 21)
        hist.hist(mean[y_test == 1], bins, alpha=0.6, label="benign")
        hist.hist(mean[y_test == 0], bins, alpha=0.6, label="malignant")
        hist.set(xlabel="predictive P(benign)", ylabel="test tumours", yscale="log")
        hist.legend()

        edges = np.linspace(0, 1, 6)
        for name, p in (("BNN", p_bnn), ("logistic regression", p_linear)):
            which = np.clip(np.digitize(p.mean(0), edges) - 1, 0, len(edges) - 2)
            counts = np.bincount(which, minlength=len(edges) - 1)
            used = counts > 0
            predicted = np.bincount(which, p.mean(0), len(edges) - 1)[used] / counts[used]
            observed = np.bincount(which, y_test, len(edges) - 1)[used] / counts[used]
            calibration.scatter(predicted, observed, s=3 * counts[used], alpha=0.6, label=name)
        calibration.plot([0, 1], [0, 1], color="0.5", linewidth=1)
        calibration.set(xlabel="mean predictive P(benign) in bin", ylabel="observed benign share")
        calibration.legend(loc="upper left")

        uncertainty.scatter(mean, spread, c=y_test, cmap="coolwarm_r", s=12)
        uncertainty.set(xlabel="predictive P(benign)", ylabel="sd of p_s(x) over weight draws");
        """
    ),
    md(
        """
        Mean-field Gaussians are known to under-estimate posterior spread in networks, and the
        joint PSIS k̂ of a 2,049-dimensional mean-field fit is far above 0.7: the fit's draws
        cannot be reweighted into the exact posterior. Its predictive probabilities are
        nonetheless the useful output, and the held-out log score above is the check that
        matters for them.
        """
    ),
    code(
        """
        psis = vingd.psis_diagnostic(
            bnn.model,
            guide,
            fit.params,
            X[train],
            y[train],
            num_samples=500,
            rng_key=jax.random.PRNGKey(2),
        )
        print(f"PSIS k̂ {psis.khat:.2f} ({psis.verdict})")
        """
    ),
]

NATIVE_FAMILIES = [
    md(
        """
        # Families on native supports

        A Gaussian over unconstrained space is one exponential family; a model's scales,
        probabilities and proportions have their own. `vingd.AutoExpFamily(model)` gives each
        latent site the family of its support (real → Gaussian, positive → Gamma, unit interval
        → Beta, simplex → Dirichlet, finite → Bernoulli/Categorical), and `vingd.fit` moves every
        site along its own natural gradient, θ_s ← (1 − ρ)θ_s + ρ η̄_s with
        η̄_s = ∇_{μ_s} E_q[log p]. Where the log joint is linear in a site's sufficient statistics
        (conditional conjugacy, detected automatically), η̄_s is exact and ρ = 1 is
        coordinate-ascent VI.
        """
    ),
    code(
        """
        %matplotlib inline
        import jax
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import numpyro
        import numpyro.distributions as dist
        from scipy import stats

        import vingd
        import vingd_models

        numpyro.enable_x64()
        """
    ),
    md(
        """
        ## A conjugate model is solved in one step

        Beta(2, 2) prior on a coin's bias, 30 flips with 21 heads: the posterior is
        Beta(23, 11). One step with ρ = 1 lands on it.
        """
    ),
    code(
        """
        def coin(flips):
            p = numpyro.sample("p", dist.Beta(2.0, 2.0))
            numpyro.sample("flips", dist.Bernoulli(p), obs=flips)


        flips = jnp.array([1.0] * 21 + [0.0] * 9)
        guide = vingd.AutoExpFamily(coin)
        one_step = vingd.fit(coin, flips, guide=guide, num_steps=1, step_size=1.0)
        print(guide.sites["p"].family, one_step.params)
        q = guide.quantiles(one_step.params, [0.05, 0.5, 0.95])["p"]
        print("guide 5/50/95%:", np.round(np.asarray(q), 4))
        exact = stats.beta(23, 11).ppf([0.05, 0.5, 0.95])
        print("exact 5/50/95%:", np.round(exact, 4))
        assert np.allclose(np.asarray(q), exact, rtol=1e-8)
        """
    ),
    md(
        """
        ## Eight schools: a Gamma for τ

        In eight schools the between-school scale τ has a posterior piled up near 0 with a long
        right tail. The unconstrained Gaussian is a log-normal on τ; a Gamma factor on τ itself
        reaches closer to 0. Both are fitted with `vingd.fit` and compared with posteriordb's
        Stan reference draws.
        """
    ),
    code(
        """
        example = vingd_models.get("eight_schools-eight_schools_noncentered")
        args, kwargs = example.load()
        reference = np.asarray(example.reference()["tau"])
        guides = {
            "Gaussian (unconstrained)": vingd.AutoNaturalNormal(example.model),
            "Gamma on τ": vingd.AutoExpFamily(example.model),
        }
        fits, elbos = {}, {}
        for name, g in guides.items():
            key = jax.random.PRNGKey(0)
            fits[name] = vingd.fit(example.model, *args, guide=g, rng_key=key, **kwargs)
            elbos[name] = vingd.elbo(example.model, g, fits[name].params, *args, **kwargs)
            value, se = elbos[name]
            q = np.ravel(g.quantiles(fits[name].params, [0.05, 0.5, 0.95])["tau"])
            print(
                f"{name:25s} {fits[name].num_steps} steps, ELBO {value:.3f} ± {se:.3f}, "
                f"τ 5/50/95% {q.round(2)}"
            )
        stan = np.quantile(reference, [0.05, 0.5, 0.95]).round(2)
        print(f"{'reference (Stan)':25s} τ 5/50/95% {stan}")
        (gauss, gauss_se), (gamma, gamma_se) = elbos.values()
        assert gamma > gauss + 2 * np.hypot(gauss_se, gamma_se)  # the tighter bound
        """
    ),
    code(
        """
        fig, ax = plt.subplots(figsize=(6.5, 3.5))
        bins = np.linspace(0, 20, 61)
        ax.hist(reference, bins, density=True, color="0.8", label="reference (Stan NUTS)")
        for name, g in guides.items():
            key = jax.random.PRNGKey(1)
            draws = g.sample_posterior(key, fits[name].params, *args, sample_shape=(20_000,))
            ax.hist(draws["tau"], bins, density=True, histtype="step", linewidth=2, label=name)
        ax.set(xlabel="τ", ylabel="density", xlim=(0, 20))
        ax.legend();
        """
    ),
    md(
        """
        The Gamma factor puts mass near τ = 0, where the posterior has it, and gains ELBO over
        the Gaussian in log τ (a tighter bound on the same evidence). `make bench-native`
        measures this on two posteriordb models with 4,000-step fits as well
        (`benchmarks/native_families.md`).
        """
    ),
]
NOTEBOOKS = {
    "01_quickstart": QUICKSTART,
    "02_ngd_vs_adam": NGD_VS_ADAM,
    "03_exponential_families": EXPONENTIAL_FAMILIES,
    "04_diagnostics": DIAGNOSTICS,
    "05_bnn": BNN,
    "06_native_families": NATIVE_FAMILIES,
}


def path(name: str) -> Path:
    return HERE / f"{name}.ipynb"


def notebook(name: str) -> nbformat.NotebookNode:
    """The notebook `name`, unexecuted."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.from_dict(c) for c in NOTEBOOKS[name]])
    nb.metadata = {
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"
    return nb


@contextlib.contextmanager
def kernel_manager():
    """A kernel manager for an IPython kernel run by this interpreter, `sys.executable`.

    The kernel spec lives in a temporary directory, so no installed Jupyter kernel (a user's
    `python3` pointing at another Python, or none at all in a fresh venv) can be picked instead.
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / KERNEL
        spec.mkdir()
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
        )
        specs = KernelSpecManager(kernel_dirs=[tmp])
        yield AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def execute(nb: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every cell of `nb` in a fresh kernel (in place); raise on the first cell error."""
    with kernel_manager() as km:
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(HERE)}},
        )
        client.execute(cleanup_kc=True)  # shut the kernel down and close its sockets
    nb.metadata["kernelspec"] = KERNELSPEC
    return nb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to build (default: all)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NOTEBOOKS))
    if unknown:
        parser.error(f"unknown notebooks {unknown}; known: {sorted(NOTEBOOKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or NOTEBOOKS:
        start = time.perf_counter()
        nb = execute(notebook(name))
        nbformat.write(nb, args.out / f"{name}.ipynb")
        print(f"{name}.ipynb: executed in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
