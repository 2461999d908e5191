"""Distribution-aware pixel contrastive loss (DistCL diagonal and full covariance; ProtoCL):
forward + backward, backward alone, and forward with gradients off, against the eager
reference loss of sepico/reference.py and the same reference under torch.compile."""
FAMILY = "loss"


def test_loss(case, measure):
    rows = measure(case)
    assert rows and all(r.status != "ok" or r.median_s is not None for r in rows)
