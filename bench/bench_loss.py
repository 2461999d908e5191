"""Pixel contrastive losses (DistCL diagonal and full covariance; ProtoCL; BankCL):
forward + backward, backward alone, and forward with gradients off, against the eager
reference loss of sepico/reference.py and the same reference under torch.compile."""
from bench.runner import check_rows

FAMILY = "loss"


def test_loss(case, measure):
    rows = measure(case)
    check_rows(rows)
