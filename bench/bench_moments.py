"""Per-class counts, sums and second moments (diagonal and full) of one batch, against the
one-hot matmul reference of sepico/reference.py and the same reference under torch.compile."""
from bench.runner import check_rows

FAMILY = "moments"


def test_class_moments(case, measure):
    rows = measure(case)
    check_rows(rows)
