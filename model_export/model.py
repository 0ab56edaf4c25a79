"""DIN-style ranking model (target attention over the user's recent sequence).

Inputs follow :data:`udfs.features.INPUT_NAMES`: per-user histories ``[U, L]``
and per-candidate rows ``[B]`` with ``cand_user`` mapping a row to its user.
The model gathers history rows by ``cand_user`` itself (``index_select``), so
the exported graph keeps the compact ``[U, L]`` inputs the job builds.

Only plain ops (Gather, MatMul, Concat, Softmax, Where, ReduceSum) reach the
graph, all of which onnxruntime's CPU and CUDA providers implement.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from udfs.features import DENSE_FEATURES, INPUT_NAMES, N_BEHAVIORS, N_GAP_BUCKETS

OUTPUT_NAME = "score"
CHECKPOINT_FILE = "model.pt"  # the torch state dict beside the ONNX export, for variants and benchmarks
MASK_FILL = -1e4
IN_HISTORY = DENSE_FEATURES.index("in_history")
RECENCY_RANK = DENSE_FEATURES.index("recency_rank")
COVISIT_RANK = DENSE_FEATURES.index("covisit_rank")
LOG_POPULARITY = DENSE_FEATURES.index("log_popularity")


def baseline_prior(dense: torch.Tensor, mix: torch.Tensor | float) -> torch.Tensor:
    """The two strongest baselines' orders as one score per candidate row.

    ``mix`` 0: co-visitation + recent (touched items first, latest first, above every
    untouched one, which follow by co-visitation rank); 1: co-visitation alone (every item
    by its co-visitation rank). Popularity breaks ties, as it does for the baselines
    (``model_export.evaluate``). Built from the dense features alone, so the exported graph
    computes it; the model's score is blended with it (``DIN.prior_weight``) where the
    validation slice says the model alone would lose to them.
    """
    touched = dense[:, IN_HISTORY] > 0
    cov = dense[:, COVISIT_RANK]
    pop = dense[:, LOG_POPULARITY]
    recent_first = torch.where(touched, 2.0 + dense[:, RECENCY_RANK], cov)
    return (1.0 - mix) * recent_first + mix * cov + 1e-3 * pop / (1.0 + pop)


@dataclass(frozen=True)
class ModelConfig:
    n_items: int
    n_categories: int
    n_dense: int = len(DENSE_FEATURES)
    dim: int = 24
    attn_hidden: int = 16
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["hidden"] = tuple(d.get("hidden", (128, 64)))
        return cls(**d)


class DIN(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.item_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.cat_emb = nn.Embedding(cfg.n_categories, d, padding_idx=0)
        self.beh_emb = nn.Embedding(N_BEHAVIORS + 1, d, padding_idx=0)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, d)
        # Attention MLP on [h, q, h*q, h-q]. Its first layer is linear, so it splits into
        # a history part (computed per user, before the gather), a query part and an
        # interaction part: W [h, q, h*q, h-q] = (W1 + W4) h + (W2 - W4) q + W3 (h*q).
        self.attn_h = nn.Linear(d, cfg.attn_hidden)
        self.attn_q = nn.Linear(d, cfg.attn_hidden, bias=False)
        self.attn_hq = nn.Linear(d, cfg.attn_hidden, bias=False)
        self.attn_out = nn.Linear(cfg.attn_hidden, 1)
        # Dense-feature standardisation, fitted on training rows (set_dense_stats).
        self.dense_mean: torch.Tensor
        self.dense_std: torch.Tensor
        self.register_buffer("dense_mean", torch.zeros(cfg.n_dense))
        self.register_buffer("dense_std", torch.ones(cfg.n_dense))
        # Added to the score of every candidate the shopper has not touched: chosen after
        # fitting, on a validation slice (model_export.tuning), 0 until then.
        self.novelty_boost: torch.Tensor
        self.register_buffer("novelty_boost", torch.zeros(()))
        # The weight of the baselines' order (baseline_prior) in the score and its mix of the
        # two baselines: chosen with the boost on the validation slice, 0 until then.
        self.prior_weight: torch.Tensor
        self.prior_mix: torch.Tensor
        self.register_buffer("prior_weight", torch.zeros(()))
        self.register_buffer("prior_mix", torch.zeros(()))
        layers: list[nn.Module] = []
        width = 4 * d + cfg.n_dense  # pooled, mean, query, query*pooled, dense
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        for emb in (self.item_emb, self.cat_emb, self.beh_emb, self.gap_emb):
            nn.init.normal_(emb.weight, std=0.05)
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()

    def set_dense_stats(self, dense: np.ndarray) -> None:
        mean = dense.mean(axis=0)
        std = dense.std(axis=0)
        std = np.where(std < 1e-6, 1.0, std)
        self.dense_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.dense_std.copy_(torch.from_numpy(std.astype(np.float32)))

    def forward(
        self,
        hist_item: torch.Tensor,
        hist_cat: torch.Tensor,
        hist_beh: torch.Tensor,
        hist_gap: torch.Tensor,
        cand_user: torch.Tensor,
        cand_item: torch.Tensor,
        cand_cat: torch.Tensor,
        dense: torch.Tensor,
    ) -> torch.Tensor:
        # Per-user history embeddings [U, L, d]; per-candidate rows are gathered by cand_user.
        h_user = (self.item_emb(hist_item) + self.cat_emb(hist_cat)
                  + self.beh_emb(hist_beh) + self.gap_emb(hist_gap))
        mask_user = (hist_beh > 0).to(h_user.dtype)  # [U, L]
        mean_user = (h_user * mask_user.unsqueeze(-1)).sum(dim=1) / mask_user.sum(dim=1, keepdim=True).clamp(
            min=1.0
        )
        ah_user = self.attn_h(h_user)  # [U, L, A]
        h = torch.index_select(h_user, 0, cand_user)  # [B, L, d]
        mask = torch.index_select(mask_user, 0, cand_user)  # [B, L]
        q = self.item_emb(cand_item) + self.cat_emb(cand_cat)  # [B, d]
        pre = (
            torch.index_select(ah_user, 0, cand_user)
            + self.attn_q(q).unsqueeze(1)
            + self.attn_hq(h * q.unsqueeze(1))
        )
        logits = self.attn_out(torch.relu(pre)).squeeze(-1)  # [B, L]
        logits = torch.where(mask > 0, logits, torch.full_like(logits, MASK_FILL))
        w = torch.softmax(logits, dim=-1) * mask
        pooled = torch.bmm(w.unsqueeze(1), h).squeeze(1)  # [B, d]
        mean = torch.index_select(mean_user, 0, cand_user)  # attention-free context
        x = (dense - self.dense_mean) / self.dense_std
        z = torch.cat([pooled, mean, q, q * pooled, x], dim=-1)
        untouched = (dense[:, IN_HISTORY] <= 0).to(dense.dtype)
        return (self.mlp(z).squeeze(-1) + self.novelty_boost * untouched
                + self.prior_weight * baseline_prior(dense, self.prior_mix))


def example_inputs(
    n_users: int = 2, n_rows: int = 5, seq_len: int = 8, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random valid inputs (for export tracing and tests)."""
    g = torch.Generator().manual_seed(seed)
    hist_beh = torch.randint(0, N_BEHAVIORS + 1, (n_users, seq_len), generator=g)
    hist_beh[:, -1] = 1  # every user has at least the trigger event
    return (
        torch.randint(0, 3, (n_users, seq_len), generator=g),
        torch.randint(0, 3, (n_users, seq_len), generator=g),
        hist_beh,
        torch.randint(0, N_GAP_BUCKETS, (n_users, seq_len), generator=g),
        torch.randint(0, n_users, (n_rows,), generator=g),
        torch.randint(0, 3, (n_rows,), generator=g),
        torch.randint(0, 3, (n_rows,), generator=g),
        torch.rand((n_rows, len(DENSE_FEATURES)), generator=g),
    )


def export_onnx(model: DIN, path: str | Path, seq_len: int, opset: int = 17) -> Path:
    """TorchScript-based export (no onnxscript needed) with dynamic U and B; L fixed."""
    path = Path(path)
    model.eval()
    args = example_inputs(3, 7, seq_len)
    dynamic_axes = {name: {0: "U"} for name in INPUT_NAMES[:4]}
    dynamic_axes.update({name: {0: "B"} for name in INPUT_NAMES[4:]})
    dynamic_axes[OUTPUT_NAME] = {0: "B"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return path
