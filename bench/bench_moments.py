"""Per-class counts, sums and second moments (diagonal and full) of one batch, against the
one-hot matmul reference of sepico/reference.py and the same reference under torch.compile."""
FAMILY = "moments"


def test_class_moments(case, measure):
    rows = measure(case)
    assert rows and all(r.status != "ok" or r.median_s is not None for r in rows)
