r"""Encoders and decoders over structured batch shapes.

A network of this module maps ``[*batch, *in_shape] -> [*batch, *out_shape]``: the leading
``batch`` dimensions (none, ``[B]``, ``[K, B]``, ...) are flattened into one before the layers and
restored after them, so that the same encoder serves one image ``[C, H, W]``, a mini-batch
``[B, C, H, W]`` and ``K`` particles of a mini-batch ``[K, B, C, H, W]``; its result equals a loop
over the batch.

* :class:`FFNN` (:class:`FFNNEncoder` ``x_shape -> [D]``, :class:`FFNNDecoder` ``[D] -> x_shape``):
  a tanh MLP of ``nlayers`` hidden layers of ``hdim`` units on the flattened input.
* :class:`CNNEncoder` / :class:`CNNDecoder`: two stride-2 convolutions (transposed for the decoder)
  and a hidden dense layer, for ``C x 28 x 28`` images (ELU activations).
* :class:`StructuredNet`: wraps any network ``[n, *in_shape] -> [n, ...]`` the same way.

The layer builders :func:`mlp`, :func:`conv_encoder` and :func:`conv_decoder` (plain
``nn.Sequential`` on a flat batch ``[n, ...]``) and :func:`init_output_bias` live here too; the
models import them from :mod:`ovis.models.vae` as before.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "StructuredNet",
    "FFNN",
    "FFNNEncoder",
    "FFNNDecoder",
    "CNNEncoder",
    "CNNDecoder",
    "mlp",
    "conv_encoder",
    "conv_decoder",
    "init_output_bias",
    "split_batch_shape",
]


def _shape(shape: Sequence[int], name: str) -> Tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {shape!r}") from None
    if any(s < 1 for s in out):
        raise ValueError(f"{name} must have positive sizes, got {out}")
    return out


def split_batch_shape(x: Tensor, event_shape: Sequence[int], name: str = "input") -> torch.Size:
    r"""The leading batch shape of ``x = [*batch, *event_shape]``; a ``ValueError`` naming the
    expected trailing shape when ``x`` does not end with ``event_shape``."""
    k = len(event_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k:]) != tuple(event_shape):
        raise ValueError(f"{name} of shape {tuple(x.shape)} must end with {tuple(event_shape)} "
                         f"([*batch, *{tuple(event_shape)}])")
    return x.shape[:x.dim() - k]


def mlp(in_dim: int, out_dim: int, hdim: int, nlayers: int, act: type = nn.Tanh) -> nn.Sequential:
    r"""``in_dim -> (hdim, act) x nlayers -> out_dim`` on ``[n, in_dim]``; ``nlayers = 0`` is a
    linear map."""
    layers: List[nn.Module] = []
    d = in_dim
    for _ in range(nlayers):
        layers += [nn.Linear(d, hdim), act()]
        d = hdim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def init_output_bias(net: nn.Module, x_mean: Tensor) -> None:
    r"""Set the bias of the last ``nn.Linear`` / ``nn.ConvTranspose2d`` of ``net`` at
    ``logit(x_mean)`` (clamped to ``[1e-3, 1 - 1e-3]``), so that ``p(x|z)`` starts at the data mean.

    For a linear layer the bias is ``[D]`` (``x_mean`` flattened); for a transposed convolution
    it is one value per channel (the mean over the image)."""
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]
    if not last or last[-1].bias is None:
        raise ValueError(f"{type(net).__name__} has no output layer with a bias to initialise")
    layer = last[-1]
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            m = x_mean.reshape(-1)
            if m.numel() != layer.bias.numel():
                raise ValueError(f"x_mean has {m.numel()} values, the output layer {layer.bias.numel()}")
        else:
            m = x_mean.reshape(layer.bias.numel(), -1).mean(1)
        m = m.to(layer.bias.dtype).clamp(1e-3, 1 - 1e-3)
        layer.bias.copy_(torch.log(m) - torch.log1p(-m))


class _View(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _check_image(x_shape: Sequence[int]) -> tuple:
    if len(x_shape) != 3 or tuple(x_shape[1:]) != (28, 28):
        raise ValueError(f"the convolutional networks need images of shape [C, 28, 28], got {tuple(x_shape)}")
    return tuple(x_shape)


def conv_encoder(x_shape: Sequence[int], out_dim: int, hdim: int = 64) -> nn.Sequential:
    r"""``[n, C, 28, 28] -> conv(32, 4, s2) -> conv(64, 4, s2) -> [n, 64*7*7] -> hdim -> out_dim``
    (ELU activations); images must be ``C x 28 x 28``."""
    C, H, W = _check_image(x_shape)
    return nn.Sequential(
        nn.Conv2d(C, 32, 4, 2, 1), nn.ELU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ELU(),
        nn.Flatten(), nn.Linear(64 * 7 * 7, hdim), nn.ELU(), nn.Linear(hdim, out_dim))


def conv_decoder(in_dim: int, x_shape: Sequence[int], hdim: int = 64) -> nn.Sequential:
    r"""``[n, in_dim] -> hdim -> 64*7*7 -> deconv(32, 4, s2) -> deconv(C, 4, s2)`` logits ``[n, C, 28, 28]``."""
    C, H, W = _check_image(x_shape)
    return nn.Sequential(
        nn.Linear(in_dim, hdim), nn.ELU(), nn.Linear(hdim, 64 * 7 * 7), nn.ELU(), _View(64, 7, 7),
        nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ELU(), nn.ConvTranspose2d(32, C, 4, 2, 1))


class StructuredNet(nn.Module):
    r"""``[*batch, *in_shape] -> [*batch, *out_shape]`` around a network ``net`` of a flat batch.

    ``net`` receives ``[n, *in_shape]`` (``n = prod(batch)``; ``[n, prod(in_shape)]`` when
    ``flatten_input``) and returns ``n`` rows of ``prod(out_shape)`` numbers in any layout
    (``[n, prod(out_shape)]`` or ``[n, *out_shape]``); the rows are reshaped to
    ``[*batch, *out_shape]``.  ``batch`` may be empty (one input) or have any number of dims.

    Args:
        net: the network of a flat batch (the submodule ``layers``).
        in_shape: the shape of one input.
        out_shape: the shape of one output.
        flatten_input: give ``net`` the inputs as ``[n, prod(in_shape)]``.
    """

    def __init__(self, net: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int],
                 flatten_input: bool = False) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        self.layers = net
        self.in_shape = _shape(in_shape, "in_shape")
        self.out_shape = _shape(out_shape, "out_shape")
        self.flatten_input = bool(flatten_input)

    def forward(self, x: Tensor) -> Tensor:
        r"""``[*batch, *in_shape] -> [*batch, *out_shape]``.

        Raises:
            ValueError: ``x`` does not end with ``in_shape``, or the network returns a number of values
                per row other than ``prod(out_shape)``.
        """
        batch = split_batch_shape(x, self.in_shape, f"the input of {type(self).__name__}")
        n = int(math.prod(batch))
        h = x.reshape(n, -1) if self.flatten_input else x.reshape(n, *self.in_shape)
        y = self.layers(h)
        if y.shape[0] != n or y[0].numel() != math.prod(self.out_shape):
            raise ValueError(f"{type(self).__name__}: the network returned {tuple(y.shape)} for {n} inputs, "
                             f"expected [{n}, {math.prod(self.out_shape)}] numbers (out_shape {self.out_shape})")
        return y.reshape(*batch, *self.out_shape)

    def extra_repr(self) -> str:
        r"""``in_shape`` and ``out_shape``, for ``repr(net)``."""
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


class FFNN(StructuredNet):
    r"""A tanh MLP ``[*batch, *in_shape] -> [*batch, *out_shape]`` on the flattened input:
    ``prod(in_shape) -> (hdim, act) x nlayers -> prod(out_shape)``.

    Args:
        in_shape, out_shape: shapes of one input and one output.
        hdim: hidden units; nlayers: hidden layers (0: a linear map).
        act: the activation class (``nn.Tanh``).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], hdim: int = 64, nlayers: int = 2,
                 act: type = nn.Tanh) -> None:
        if int(hdim) < 1 or int(nlayers) < 0:
            raise ValueError(f"invalid FFNN: hdim={hdim} (>= 1), nlayers={nlayers} (>= 0)")
        i, o = _shape(in_shape, "in_shape"), _shape(out_shape, "out_shape")
        super().__init__(mlp(math.prod(i), math.prod(o), int(hdim), int(nlayers), act), i, o, flatten_input=True)


class FFNNEncoder(FFNN):
    r"""``[*batch, *x_shape] -> [*batch, out_dim]`` (a :class:`FFNN`)."""

    def __init__(self, x_shape: Sequence[int], out_dim: int, hdim: int = 64, nlayers: int = 2,
                 act: type = nn.Tanh) -> None:
        super().__init__(x_shape, (int(out_dim),), hdim, nlayers, act)


class FFNNDecoder(FFNN):
    r"""``[*batch, *in_shape] -> [*batch, *x_shape]`` (a :class:`FFNN`; ``in_shape`` an int
    ``D`` or a shape such as ``(N, K)`` for categorical latents)."""

    def __init__(self, in_shape: int | Sequence[int], x_shape: Sequence[int], hdim: int = 64, nlayers: int = 2,
                 act: type = nn.Tanh) -> None:
        super().__init__((int(in_shape),) if isinstance(in_shape, int) else in_shape, x_shape, hdim, nlayers, act)


class CNNEncoder(StructuredNet):
    r"""``[*batch, C, 28, 28] -> [*batch, out_dim]`` (:func:`conv_encoder`)."""

    def __init__(self, x_shape: Sequence[int], out_dim: int, hdim: int = 64) -> None:
        super().__init__(conv_encoder(x_shape, int(out_dim), int(hdim)), x_shape, (int(out_dim),))


class CNNDecoder(StructuredNet):
    r"""``[*batch, *in_shape] -> [*batch, C, 28, 28]`` (:func:`conv_decoder`; the latent is
    flattened to ``prod(in_shape)`` numbers)."""

    def __init__(self, in_shape: int | Sequence[int], x_shape: Sequence[int], hdim: int = 64) -> None:
        i = (int(in_shape),) if isinstance(in_shape, int) else _shape(in_shape, "in_shape")
        super().__init__(conv_decoder(math.prod(i), x_shape, int(hdim)), i, x_shape, flatten_input=True)
