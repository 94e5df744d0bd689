"""``upper_codes``: the codes of the level above, upsampled to this level's rate (Jukebox's Conditioner).

An upsampler prior (Jukebox's middle and bottom priors) predicts its codes given the codes
of the level above, which run `stride ** down` times slower (4x in Jukebox: hop 32 -> 8
and 128 -> 32). As in openai/jukebox ``prior/conditioners.py`` (``Conditioner``) and paper
section 4.2, the upper codes are embedded, upsampled by a ``DecoderConvBock``
(``vqvae/encdec.py``: a 3-tap convolution in, then per step a dilated residual stack and a
transposed convolution, here :class:`jukebox_pl.modules.encdec.UpsamplingStage`), and
layer-normalised. The stack is non-causal: a position sees upper codes on both sides,
which is fine because the whole upper level is known before this level is sampled.

Example::

    upper = UpperCodesConditioner(width=64, codebook_size=512, down=2, stride=2, cond_width=32, cond_depth=4)
    upper(torch.randint(0, 512, (2, 16))).shape  # (2, 64, 64): (B, T_up * 4, width)
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from jukebox_pl.modules.encdec import UpsamplingStage
from jukebox_pl.registry import register


@register("conditioner", "upper_codes")
class UpperCodesConditioner(pl.LightningModule):
    """Upper-level codes (B, T_up) -> conditioning (B, T_up * stride**down, width) for the prior below."""

    def __init__(
        self,
        width: int,
        codebook_size: int,
        down: int,
        stride: int,
        cond_width: int = 1024,
        cond_depth: int = 16,
        dilation_growth_rate: int = 3,
        dilation_cycle: int | None = 8,
        m_conv: float = 1.0,
        zero_out: bool = False,
        res_scale: bool = False,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if down < 1:
            raise ValueError(f"upper_codes conditioner: down must be at least 1 (one upsampling step), got {down}")
        if stride < 2 or stride % 2:
            # kernel 2 * stride with padding stride / 2 maps T to T * stride only for even strides
            raise ValueError(f"upper_codes conditioner: stride must be even, got {stride}")
        self.width, self.codebook_size = width, codebook_size
        self.ratio = stride**down
        self.x_emb = nn.Embedding(codebook_size, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)  # Jukebox Conditioner: std 0.02 * init_scale
        # Jukebox upsamplers (hparams.py): cond_width 1024, cond_depth 16, dilation growth 3 with cycle 8;
        # the Conditioner does not reverse the dilations (reverse_decoder_dilation keeps its default, False).
        self.cond = UpsamplingStage(
            width,
            width,
            down,
            stride,
            cond_width,
            cond_depth,
            m_conv=m_conv,
            dilation_growth_rate=dilation_growth_rate,
            dilation_cycle=dilation_cycle,
            zero_out=zero_out,
            res_scale=res_scale,
        )
        self.ln = nn.LayerNorm(width)

    def tokenize(self, upper_codes: torch.Tensor) -> torch.Tensor:
        """The codes are already tokens: returned as int64, for the conditioners' common interface."""
        return torch.as_tensor(upper_codes, dtype=torch.long)

    def forward(self, upper_codes: torch.Tensor) -> torch.Tensor:
        """(B, T_up) codes -> (B, T_up * stride**down, width)."""
        if upper_codes.dim() != 2:
            raise ValueError(f"upper_codes conditioner: expected codes (B, T_up), got {tuple(upper_codes.shape)}")
        x = self.x_emb(upper_codes.long())  # (B, T_up, width)
        x = self.cond(x.transpose(1, 2)).transpose(1, 2)  # (B, T_up * ratio, width)
        return self.ln(x)
