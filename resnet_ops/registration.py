"""The ``resnet_ops`` operator namespace of PyTorch's dispatcher.

Each operator is defined by its schema, one kernel for every device (the kernels check the device
themselves, with an error that names the operand) and a fake implementation that gives the shapes
of the results from the shapes of the arguments (torch.compile, torch.export and meta tensors run
it instead of the kernel). ``torch.library.custom_op`` registers the same, but its kernels import
torch._dynamo at their first call: seconds of start-up for every process that runs a convolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NAMESPACE = "resnet_ops"
OPERATORS = torch.library.Library(NAMESPACE, "FRAGMENT")  # kept alive: the registrations last as long


def register(schema: str, kernel: Callable, fake: Callable) -> str:
    """Define ``resnet_ops::<schema>`` with ``kernel`` and ``fake``; returns the qualified name."""
    name = schema.split("(")[0]
    OPERATORS.define(schema)
    OPERATORS.impl(name, kernel, "CompositeExplicitAutograd")
    qualified = f"{NAMESPACE}::{name}"
    torch.library.register_fake(qualified, fake, lib=OPERATORS)
    return qualified
