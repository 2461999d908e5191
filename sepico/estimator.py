"""Running per-class feature distribution and memory bank (the math: kernels/README.md).

The estimator keeps, per class, the count of pixels seen, their mean and their (biased)
covariance, diagonal [C, D] or full [C, D, D], and merges each batch into them with the exact
count-weighted rule (``kernels.merge_class_moments`` of the batch's shifted moments, one algorithm
with one process and with many): a class absent from the batch keeps its statistics. Nothing is
forgotten (the reference behaviour).

With ``memory_length > 0`` it also keeps BankCL's memory bank: per class, a queue of at most
``memory_length`` batch means, oldest first. As in the reference estimator every queue starts
with one zero vector, which stays until newer means push it out; each ``update`` appends the
batch mean of every class present in that batch (so updating with two half-batches and with
their union give the same statistics but not the same bank).
"""
from __future__ import annotations

import os

import torch

import kernels

_STATE_KEYS = ("count", "mean", "cov", "bank", "bank_len")


class ClassDistributionEstimator:
    """Per-class count, mean, covariance and memory bank of pixel embeddings.

    Args:
        num_classes: C. dim: D, the embedding channels.
        covariance: ``"diag"`` (cov [C, D], the reference's) or ``"full"`` (cov [C, D, D]).
        memory_length: length of each class's BankCL queue; 0 keeps no bank.
        momentum: None (the published count-weighted merge, which never forgets) or a number
            in (0, 1): each update moves a present class's mean and covariance a share
            1 - momentum towards the batch's (their mixture), forgetting old batches
            exponentially; a class seen for the first time takes the batch statistics.
        device, dtype: where and in which precision (float32 or float64) the statistics live.

    Attributes (read-only): ``count`` [C], ``mean`` [C, D], ``cov`` [C, D] or [C, D, D], and the
    bank twice: ``memory_bank``, the ``kernels.MemoryBank`` that ``kernels.bank_contrastive_loss``
    takes, and ``bank``, a list of C tensors [L_c, D] (oldest entry first; L_c = 0 when
    ``memory_length`` is 0), the format ``sepico.losses.bank_contrastive_loss`` takes. Each update
    replaces these tensors with new ones, so a tensor read before an update keeps its values.
    """

    def __init__(self, num_classes: int, dim: int, *, covariance: str = "diag",
                 memory_length: int = 0, momentum: float | None = None, device=None,
                 dtype=torch.float32):
        for name, value, low in (("num_classes", num_classes, 1), ("dim", dim, 1),
                                 ("memory_length", memory_length, 0)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        covariance = kernels.covariance_kind(covariance, (kernels.Covariance.DIAG, kernels.Covariance.FULL))
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 < momentum < 1.0):
            raise ValueError(f"momentum must be None or a number in (0, 1), got {momentum!r}")
        self._momentum = None if momentum is None else float(momentum)
        self._covariance = covariance
        self._memory_length = memory_length
        cov_shape = (num_classes, dim) if covariance == "diag" else (num_classes, dim, dim)
        opts = dict(device=device, dtype=dtype)
        self._count = torch.zeros(num_classes, **opts)
        self._mean = torch.zeros(num_classes, dim, **opts)
        self._cov = torch.zeros(cov_shape, **opts)
        # The bank as one tensor: class c's queue is _bank[c, :_bank_len[c]], oldest first.
        # Every queue starts as one zero vector (the reference estimator's initial entry).
        self._bank = torch.zeros(num_classes, memory_length, dim, **opts)
        self._bank_len = torch.full((num_classes,), min(memory_length, 1), dtype=torch.int64,
                                    device=device)

    # ------------------------------------------------------------------ read access

    @property
    def num_classes(self) -> int:
        return self._mean.shape[0]

    @property
    def dim(self) -> int:
        return self._mean.shape[1]

    @property
    def covariance(self) -> str:
        return self._covariance

    @property
    def momentum(self) -> float | None:
        return self._momentum

    @property
    def memory_length(self) -> int:
        return self._memory_length

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self._mean.dtype

    @property
    def count(self) -> torch.Tensor:
        return self._count

    @property
    def mean(self) -> torch.Tensor:
        return self._mean

    @property
    def cov(self) -> torch.Tensor:
        return self._cov

    @property
    def memory_bank(self) -> kernels.MemoryBank:
        """The bank as the one value ``kernels.bank_contrastive_loss`` takes: queues
        [C, memory_length, D] and lengths [C] (no host sync)."""
        return kernels.MemoryBank(self._bank, self._bank_len)

    @property
    def bank(self) -> list[torch.Tensor]:
        """C tensors [L_c, D], oldest entry first (one host sync to read the lengths)."""
        return [self._bank[c, :n] for c, n in enumerate(self._bank_len.tolist())]

    def __repr__(self) -> str:
        return (f"ClassDistributionEstimator(num_classes={self.num_classes}, dim={self.dim}, "
                f"covariance={self.covariance.value!r}, memory_length={self.memory_length}, "
                f"momentum={self._momentum}, "
                f"device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------ update

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = 255,
               group=None) -> torch.Tensor:
        """Merge a batch of pixel embeddings into the statistics (and the bank).

        One algorithm for one process and many: the batch moments of z - mean[y] (shifted by the
        running means, which every process holds alike: they add across processes, and the shift
        keeps the one-pass covariance free of cancellation), summed over the processes of
        ``group`` with one ``all_reduce`` of C x (1 + 2D) numbers (diagonal) or C x (1 + D + D^2)
        (full), never the pixels, then the count-weighted merge (``kernels.merge_class_moments``).
        Every process ends with the statistics and bank of one update over all their pixels.
        ``kernels.update_class_distribution`` takes the batch moments in two passes instead,
        about the batch means (exact at any distance from the running means, one more read of
        the pixels); near the running means both give the same statistics to float32 rounding.

        Args:
            feats: [N, D] rows or a [B, D, h, w] map of embeddings (float32, float16, bfloat16,
                or float64 on the torch backend), read in place; no gradient flows into the
                statistics.
            labels: one int64 or int32 class id per pixel ([N] or [B, h, w]) in [0, C) or
                ``ignore_index`` (dropped).
            group: a ``torch.distributed`` process group to synchronise over (every process
                passes its own pixels), or None.

        Returns:
            The batch mean of each class [C, D] (over all processes; 0 for a class absent from
            the batch): the entries the bank takes.
        """
        if (not isinstance(feats, torch.Tensor) or feats.dim() not in (2, 4)
                or feats.shape[1] != self.dim):
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"feats must have shape [N, {self.dim}] or [B, {self.dim}, h, w], got {shape}")
        n_b, total, second = kernels.class_moments(feats.detach(), labels, self.num_classes,
                                                   ignore_index=ignore_index,
                                                   covariance=self._covariance, shift=self._mean)
        if group is not None:
            import torch.distributed as dist

            flat = torch.cat([n_b.to(self.dtype), total.to(self.dtype).flatten(),
                              second.to(self.dtype).flatten()])
            dist.all_reduce(flat, group=group)
            c, d = self.num_classes, self.dim
            n_b, total, second = flat[:c], flat[c:c + c * d].view(c, d), flat[c + c * d:].view(second.shape)
        n_b = n_b.to(self.dtype)
        weight_count = self._count if self._momentum is None else self._forgetting_count(n_b)
        _, mean, cov = kernels.merge_class_moments(weight_count, self._mean, self._cov, n_b,
                                                   total, second, shift=self._mean)
        present = n_b > 0
        batch_mean = torch.where(present[:, None], self._mean + total.to(self.dtype) / n_b.clamp(min=1)[:, None], 0.0)
        if self._memory_length > 0:
            self._push_bank(present, batch_mean)
        self._count, self._mean, self._cov = self._count + n_b, mean, cov
        return batch_mean

    def _forgetting_count(self, n_b: torch.Tensor) -> torch.Tensor:
        """The running count that makes the count-weighted merge forget exponentially.

        With momentum m, a present class moves a fixed share 1 - m towards its batch: the merge
        weight w = n_b / (n + n_b) equals 1 - m for n = n_b m / (1 - m). A class never seen
        before keeps n = 0 (w = 1: it takes the batch statistics); absent classes have w = 0."""
        m = self._momentum
        return torch.where(self._count > 0, n_b.to(self.dtype) * (m / (1.0 - m)), 0.0)

    def _push_bank(self, present: torch.Tensor, batch_mean: torch.Tensor) -> None:
        """Append each present class's batch mean to its queue, dropping the oldest entry of a
        full queue. Tensor ops only (no host sync); the old bank tensor is left untouched."""
        length = self._memory_length
        full = self._bank_len >= length
        shift = (present & full)[:, None, None]
        bank = torch.where(shift, self._bank.roll(-1, dims=1), self._bank)
        slot = torch.where(full, length - 1, self._bank_len)
        rows = torch.arange(self.num_classes, device=bank.device)
        bank[rows, slot] = torch.where(present[:, None], batch_mean, bank[rows, slot])
        self._bank = bank
        self._bank_len = torch.where(present, (self._bank_len + 1).clamp(max=length), self._bank_len)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """The state as tensors: count, mean, cov, bank [C, memory_length, D], bank_len [C]."""
        return {"count": self._count, "mean": self._mean, "cov": self._cov,
                "bank": self._bank, "bank_len": self._bank_len}

    def load_state_dict(self, state: dict) -> None:
        """Copy a ``state_dict()`` in, to this estimator's device and dtype. The shapes must
        match this estimator's (C, D, covariance kind and memory_length)."""
        missing = [k for k in _STATE_KEYS if k not in state]
        unexpected = [k for k in state if k not in _STATE_KEYS]
        if missing or unexpected:
            raise KeyError(f"state_dict keys do not match: missing {missing}, unexpected "
                           f"{unexpected}")
        current = self.state_dict()
        loaded = {}
        for key in _STATE_KEYS:
            value = state[key]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state_dict[{key!r}] must be a tensor, got {type(value).__name__}")
            if value.shape != current[key].shape:
                raise ValueError(f"state_dict[{key!r}] has shape {tuple(value.shape)}, this "
                                 f"estimator expects {tuple(current[key].shape)}")
            loaded[key] = value.detach().to(device=current[key].device,
                                            dtype=current[key].dtype, copy=True)
        for key in ("count", "mean", "cov", "bank"):
            if not bool(torch.isfinite(loaded[key]).all()):
                raise ValueError(f"state_dict[{key!r}] holds NaN or infinite values")
        if bool((loaded["count"] < 0).any()):
            raise ValueError("state_dict['count'] holds negative pixel counts")
        diagonal = loaded["cov"] if loaded["cov"].dim() == 2 else loaded["cov"].diagonal(dim1=1, dim2=2)
        if bool((diagonal < 0).any()):
            raise ValueError("state_dict['cov'] holds negative variances")
        lengths = loaded["bank_len"]
        if bool(((lengths < 0) | (lengths > self._memory_length)).any()):
            raise ValueError(f"state_dict['bank_len'] must be in [0, {self._memory_length}], got "
                             f"{lengths.tolist()}")
        self._count, self._mean, self._cov = loaded["count"], loaded["mean"], loaded["cov"]
        self._bank, self._bank_len = loaded["bank"], loaded["bank_len"]

    @classmethod
    def from_reference_checkpoint(cls, path: str | os.PathLike, *, covariance: str = "diag",
                                  memory_length: int = 0, device=None,
                                  dtype=torch.float32) -> "ClassDistributionEstimator":
        """An estimator holding the statistics that the reference implementation saved
        (``ProtoEstimator.save_proto``: a torch file with ``Ave`` [C, D], ``CoVariance`` [C, D]
        and ``Amount`` [C]). ``covariance="full"`` puts the diagonal on a [C, D, D] matrix. The
        reference does not save its bank: with ``memory_length > 0`` the queues start afresh
        (one zero vector each)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or any(k not in state for k in ("Ave", "CoVariance", "Amount")):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise KeyError(f"{os.fspath(path)!r} is not a reference estimator checkpoint: "
                           f"expected keys Ave, CoVariance, Amount, got {keys}")
        ave, variance, amount = state["Ave"], state["CoVariance"], state["Amount"]
        if ave.dim() != 2 or variance.shape != ave.shape or amount.shape != ave.shape[:1]:
            raise ValueError(f"checkpoint shapes do not fit: Ave {tuple(ave.shape)}, CoVariance "
                             f"{tuple(variance.shape)}, Amount {tuple(amount.shape)} (expected "
                             "[C, D], [C, D], [C])")
        num_classes, dim = ave.shape
        est = cls(num_classes, dim, covariance=covariance, memory_length=memory_length,
                  device=device, dtype=dtype)
        cov = torch.diag_embed(variance) if covariance == "full" else variance
        opts = dict(device=est.device, dtype=est.dtype)
        est._count = amount.to(**opts)
        est._mean = ave.to(**opts)
        est._cov = cov.to(**opts)
        return est
