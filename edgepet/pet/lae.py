"""LAE: continual tuning with an online and an offline PET module.

After Gao et al., "A Unified Continual Learning Framework with General
Parameter-Efficient Tuning" (ICCV 2023). One set of PET parameters (the *online*
module) is trained on each task in turn; after every optimizer step an *offline* copy
takes an exponential moving average of it, so it remembers earlier tasks and changes
slowly. Inference runs the model with each and keeps, per class, the larger of the two
softmax probabilities. The paper also slows the online module down at the start of each
task ("calibrated adaptation speed"); that is a choice in the user's training loop
(e.g. a warm-up of the learning rate) and is not built in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from edgepet.pet.model import ApplyReport, apply
from edgepet.quant.select import ALL_LINEAR


class LAE(nn.Module):
    """Wrap ``model`` with PET layers and keep an EMA (offline) copy of them.

    Args:
        model: the pretrained model; PET layers are applied to it in place.
        method, target_modules, also_train, **config: as for :func:`edgepet.pet.apply`.
        ema_decay: weight of the old offline value in each :meth:`accumulate`.

    Train ``online_parameters()`` with any optimizer and call :meth:`accumulate` after
    each step. Calling the module returns ensembled probabilities.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "adapter",
        target_modules: str | Sequence[str] = ALL_LINEAR,
        ema_decay: float = 0.99,
        also_train: Sequence[str] = (),
        **config,
    ) -> None:
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1)")
        self.model = model
        self.report: ApplyReport = apply(model, method, target_modules, also_train, **config)
        self.ema_decay = ema_decay
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.offline = nn.Module()
        for n, p in model.named_parameters():
            if p.requires_grad:
                self.offline.register_buffer(n.replace(".", "__"), p.detach().clone())

    def online_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters to train: the online PET module (and ``also_train``)."""
        params = dict(self.model.named_parameters())
        return (params[n] for n in self._names)

    def offline_state(self) -> dict[str, torch.Tensor]:
        """The offline module's values by the model's parameter names."""
        return {n: getattr(self.offline, n.replace(".", "__")) for n in self._names}

    @torch.no_grad()
    def accumulate(self) -> None:
        """``offline = d * offline + (1 - d) * online``; call after each optimizer step."""
        online = dict(self.model.named_parameters())
        for n, off in self.offline_state().items():
            off.mul_(self.ema_decay).add_(online[n].detach(), alpha=1.0 - self.ema_decay)

    def online_logits(self, *args, **kwargs) -> torch.Tensor:
        """The model's output with the online PET module."""
        return self.model(*args, **kwargs)

    def offline_logits(self, *args, **kwargs) -> torch.Tensor:
        """The model's output with the offline PET module swapped in."""
        return functional_call(self.model, self.offline_state(), args, kwargs)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """Ensembled class probabilities: element-wise max of the two softmaxes."""
        on = self.online_logits(*args, **kwargs).softmax(dim=-1)
        off = self.offline_logits(*args, **kwargs).softmax(dim=-1)
        return torch.maximum(on, off)
