"""The implementations put side by side: ours (the kernels; for the update also the estimator,
which composes them as training runs them) and the references of sepico/reference.py (eager,
torch.compile, the one-hot estimator); nothing here re-implements them."""
from __future__ import annotations


from bench.cases import C, Case, FAMILY_OPS, IMPL_LABEL


# --------------------------------------------------------------------------- implementations

class Unsupported(Exception):
    """The implementation does not take this case (ours: D > 256 with a full covariance)."""


def build(case: Case, impl: str, inputs: dict, backend: str):
    """A callable for one implementation of ``case`` on ``inputs``.

    Loss ops return ``run(feats) -> loss`` (the caller sets requires_grad and calls backward);
    moments and updates return ``run() -> outputs``.
    """
    import torch

    import kernels
    from sepico import reference

    cov_kind = FAMILY_OPS[case.family][case.op]
    labels, mean, cov = inputs["labels"], inputs["mean"], inputs["cov"]
    mean_r, cov_r = inputs["mean_ref"], inputs["cov_ref"]
    feats = inputs["feats"]
    if case.family == "loss" and cov_kind == "bank":
        bank, lengths = inputs["bank"], inputs["bank_len"]
        if impl == "ours":
            def run(x):
                with kernels.backend(backend):
                    return kernels.bank_contrastive_loss(x, labels, kernels.MemoryBank(bank, lengths))
            return run
        if impl != "eager":
            raise Unsupported(f"{impl} is not measured for BankCL (its reference is a per-class loop)")
        queues = list(bank.to(feats.dtype).unbind(0))  # the public code's loop, the rows as a 1 x N map
        return lambda x: reference.bank_contrastive_map_reference(
            x.T.reshape(1, x.shape[1], 1, -1), labels.reshape(1, 1, 1, -1), queues, num_classes=C)
    elif case.family == "loss":
        cov = None if cov_kind is None else cov
        cov_r = None if cov_kind is None else cov_r
        if impl in ("ours", "ours_tf32"):
            if cov_kind == "full" and case.d > 256:
                raise Unsupported("full covariance takes D <= 256")
            tf32 = impl == "ours_tf32"

            def run(x):
                # TF32 is the caller's opt-in, the PyTorch way (kernels/README.md).
                before = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    with kernels.backend(backend):
                        return kernels.dist_contrastive_loss(x, labels, mean, cov)
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = before
            return run
        fn = reference.dist_contrastive_loss_reference
        if impl == "compiled":
            fn = torch.compile(fn, dynamic=False)
        if impl in ("eager", "compiled"):
            return lambda x: fn(x, labels, mean_r, cov_r)
    elif case.family == "moments":
        if impl == "ours":
            if cov_kind == "full" and case.d > 256:
                raise Unsupported("full covariance takes D <= 256")

            def run():
                with kernels.backend(backend):
                    return kernels.class_moments(feats, labels, C, covariance=cov_kind)
            return run
        fn = reference.class_moments_reference
        if impl == "compiled":
            fn = torch.compile(fn, dynamic=False)
        if impl in ("eager", "compiled"):
            return lambda: fn(feats, labels, C, covariance=cov_kind)
    elif case.family == "update":
        count = inputs["count"]
        if impl in ("ours", "estimator") and cov_kind == "full" and case.d > 256:
            raise Unsupported("full covariance takes D <= 256")
        if impl == "ours":
            def run():
                with kernels.backend(backend):
                    return kernels.update_class_distribution(count, mean, cov, feats, labels)
            return run
        if impl == "estimator":
            from sepico.estimator import ClassDistributionEstimator

            est = ClassDistributionEstimator(C, feats.shape[1], covariance=cov_kind, device=feats.device)
            est.load_state_dict({**est.state_dict(), "count": count, "mean": mean, "cov": cov})

            def run():  # each call merges the batch once more: other values, the same work
                with kernels.backend(backend):
                    return est.update(feats, labels)
            return run
        if impl == "onehot":
            if cov_kind != "diag":
                raise Unsupported("the one-hot estimator keeps a diagonal covariance")
            return lambda: reference.update_class_distribution_onehot_reference(
                count, mean, cov, feats, labels)
        fn = reference.update_class_distribution_reference
        if impl == "compiled":
            fn = torch.compile(fn, dynamic=False)
        if impl in ("eager", "compiled"):
            return lambda: fn(count, mean, cov, feats, labels)
    raise ValueError(f"no implementation {impl!r} for {case.op}")


def ours_backend(device: str) -> str:
    return "torch" if device == "cpu" else "auto"


def impl_label(impl: str, device: str) -> str:
    if impl == "ours":
        return f"ours ({'torch' if device == 'cpu' else 'triton'})"
    return IMPL_LABEL[impl]
