"""The cached decode step of an exported language model.

A model that can decode (``decode(tokens, cache, position)`` and ``new_cache(batch)``, as
:class:`regrow.models.CharGPT`) is exported with its decode step traced as a second graph module,
``exported.decode``, beside ``exported.new_cache(batch)``, which builds an empty cache. Both run
the exported model's own (pruned) modules, but each graph chooses its layers' forms for its own
input: the decode step sees one token per sample, where the sparse forms pay most.

::

    cache = exported.new_cache(1)
    logits = exported.decode(prompt, cache, 0)               # [1, T, vocabulary]
    logits = exported.decode(next_token, cache, T)          # one token at a time after that
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from .graph import TOLERANCE, checked_difference
from .passes import drop_identities

#: The context already in the cache when a decode step is timed, as a fraction of the model's
#: longest context (its ``block_size``).
TIMED_CONTEXT = 0.5


def can_decode(model: nn.Module) -> bool:
    return callable(getattr(model, "decode", None)) and callable(getattr(model, "new_cache", None))


def trace_decode(model: nn.Module) -> fx.GraphModule:
    """``model.decode`` traced with torch.fx, over ``model``'s own submodules (same names)."""
    view = copy.copy(model)  # shares the submodules
    view.__class__ = type("Decode", (type(model),), {"forward": type(model).decode})
    graph = fx.Tracer().trace(view)
    return fx.GraphModule(model, graph, class_name="Decode")


def rebind(
    decoder: fx.GraphModule, exported: fx.GraphModule, folded: dict[str, str]
) -> fx.GraphModule:
    """``decoder``'s graph over ``exported``'s modules, after the export's passes: dropout and
    identity calls gone, batch norms folded into their layer gone (``folded``: layer → norm)."""
    drop_identities(decoder)
    norms = set(folded.values())
    for node in list(decoder.graph.nodes):
        if node.op == "call_module" and node.target in norms:
            node.replace_all_uses_with(node.args[0])
            decoder.graph.erase_node(node)
    return fx.GraphModule(exported, decoder.graph, class_name="Decode")


def step_inputs(
    model: nn.Module, batch_size: int, context: float = TIMED_CONTEXT
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One decode step's inputs: a token per sample, a cache, and the context already in it
    (``context`` of the model's ``block_size``)."""
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, model.vocab_size, (batch_size, 1), generator=generator)
    position = int(model.block_size * context)
    return tokens, model.new_cache(batch_size), position


def new_cache_graph(model: nn.Module) -> fx.GraphModule:
    """A graph module ``new_cache(batch)`` that returns zeros shaped as ``model.new_cache(batch)``
    (a tuple of tensors whose dimension 0 is the batch)."""
    graph = fx.Graph()
    batch = graph.placeholder("batch")
    zeros = []
    for tensor in model.new_cache(1):
        size = (batch, *tensor.shape[1:])
        zeros.append(graph.call_function(torch.zeros, (size,), {"dtype": tensor.dtype}))
    graph.output(tuple(zeros))
    return fx.GraphModule(nn.Module(), graph, class_name="NewCache")


def attach(exported: fx.GraphModule, decoder: fx.GraphModule, model: nn.Module) -> None:
    """Make ``decoder`` and a ``new_cache`` graph submodules of ``exported``."""
    exported.add_module("decode", decoder)
    exported.add_module("new_cache", new_cache_graph(model))


def decode_all(model: Any, tokens: torch.Tensor, split: int) -> torch.Tensor:
    """``tokens``' logits through ``model.decode``: the first ``split`` at once, then one by one."""
    cache = model.new_cache(tokens.shape[0])
    outputs = [model.decode(tokens[:, :split], cache, 0)]
    for position in range(split, tokens.shape[1]):
        outputs.append(model.decode(tokens[:, position : position + 1], cache, position))
    return torch.cat(outputs, dim=1)


def check_decode(
    reference: nn.Module,
    exported: fx.GraphModule,
    tokens: torch.Tensor,
    tolerance: float = TOLERANCE,
) -> float:
    """The largest difference between the masked model's logits of ``tokens`` and the exported
    decode step's, fed a prefix and then token by token (``RuntimeError`` past the tolerance)."""
    tokens = tokens[:, : min(tokens.shape[1], 12)]
    with torch.inference_mode():
        expected = reference(tokens)
        got = decode_all(exported, tokens, split=max(1, tokens.shape[1] // 2))
    return checked_difference(expected, got, "the exported decode step's logits", tolerance)
