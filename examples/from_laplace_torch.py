"""laplace-torch's regression example, run with one import changed.

What it shows: code written for laplace-torch (``from laplace import Laplace,
marglik_training``) runs on laplacetorch by importing the same names from
``laplacetorch.compat``: the MAP fit, the Laplace fit, tuning δ and σ through
``log_marginal_likelihood`` with Adam, saving and loading the state, the marginal and the
joint predictive, and ``marglik_training``. The data are laplace-torch's sinusoid (generated
here, nothing is downloaded).

Run it (about 15 s on two CPU cores)::

    python examples/from_laplace_torch.py [--epochs 1000]
"""

from __future__ import annotations

import argparse
import io

import torch
import torch.utils.data as data_utils

# laplace-torch:  from laplace import Laplace, marglik_training
#                 from laplace.curvature.backpack import BackPackGGN
from laplacetorch.compat import Laplace, marglik_training
from laplacetorch.compat.curvature.backpack import BackPackGGN


def get_sinusoid_example(n_data=150, sigma_noise=0.3, batch_size=150):
    x_train = (torch.rand(n_data) * 8).unsqueeze(-1)
    y_train = torch.sin(x_train) + torch.randn_like(x_train) * sigma_noise
    train_loader = data_utils.DataLoader(
        data_utils.TensorDataset(x_train, y_train), batch_size=batch_size
    )
    x_test = torch.linspace(-5, 13, 500).unsqueeze(-1)
    return x_train, y_train, train_loader, x_test


def get_model():
    torch.manual_seed(711)
    return torch.nn.Sequential(torch.nn.Linear(1, 50), torch.nn.Tanh(), torch.nn.Linear(50, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000)
    n_epochs = parser.parse_args().epochs
    torch.manual_seed(711)
    _, _, train_loader, x_test = get_sinusoid_example(sigma_noise=0.3)

    model = get_model()
    criterion = torch.nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(n_epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()

    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full")
    la.fit(train_loader)
    log_prior, log_sigma = torch.ones(1, requires_grad=True), torch.ones(1, requires_grad=True)
    hyper_optimizer = torch.optim.Adam([log_prior, log_sigma], lr=1e-1)
    for _ in range(n_epochs):
        hyper_optimizer.zero_grad()
        neg_marglik = -la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())
        neg_marglik.backward()
        hyper_optimizer.step()

    buffer = io.BytesIO()  # laplace-torch's example saves to a file
    torch.save(la.state_dict(), buffer)
    buffer.seek(0)
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full")
    la.load_state_dict(torch.load(buffer, weights_only=False))
    print(
        f"sigma={la.sigma_noise.item():.2f}",
        f"prior precision={la.prior_precision.item():.2f}",
    )

    f_mu, f_var = la(x_test)  # (m, k) and (m, k, k), of f: add σ² for y
    f_mu_joint, f_cov = la(x_test, joint=True)  # (m·k,) and (m·k, m·k)
    assert torch.allclose(f_mu.flatten(), f_mu_joint)
    assert torch.allclose(f_var.flatten(), f_cov.diag())
    pred_std = (f_var.squeeze() + la.sigma_noise.square()).sqrt()
    print(f"predictive std of y: {pred_std.min():.3f} (on the data) to {pred_std.max():.3f}")

    la, model, margliks, _ = marglik_training(
        model=get_model(),
        train_loader=train_loader,
        likelihood="regression",
        hessian_structure="full",
        backend=BackPackGGN,
        n_epochs=n_epochs,
        optimizer_kwargs={"lr": 1e-2},
        prior_structure="scalar",
    )
    print(
        f"marglik_training: sigma={la.sigma_noise.item():.2f}",
        f"prior precision={la.prior_precision.numpy()}",
        f"log evidence {-margliks[0]:.1f} -> {-min(margliks):.1f}",
    )


if __name__ == "__main__":
    main()
