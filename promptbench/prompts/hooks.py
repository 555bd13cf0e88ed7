"""Per-layer edits of hidden states through forward pre-hooks, valid for every supported tower.

open_clip residual blocks, timm ViT blocks and HF ``BertLayer`` all receive the hidden states as their
first positional argument, so one pre-hook replaces it. Hooks live only inside the ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

LayerEdit = Callable[[Tensor], Tensor]


@contextmanager
def edit_layers(blocks: Sequence[nn.Module], edits: Mapping[int, LayerEdit]) -> Iterator[None]:
    """Apply ``edits[i]`` to the hidden states entering ``blocks[i]`` for the duration of the block."""
    handles = []

    def make_hook(fn: LayerEdit):
        def hook(_module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else "x"
            return args, {**kwargs, key: fn(kwargs[key])}

        return hook

    try:
        for index, fn in edits.items():
            if not 0 <= index < len(blocks):
                raise IndexError(f"layer {index} outside the tower's {len(blocks)} blocks")
            handles.append(blocks[index].register_forward_pre_hook(make_hook(fn), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
