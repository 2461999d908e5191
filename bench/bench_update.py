"""Count-weighted class-distribution update (diagonal and full covariance): ours
(``kernels.update_class_distribution``, two passes) and the path training runs
(``ClassDistributionEstimator.update``: one pass about the running means), against the eager reference of sepico/reference.py, the same reference under
torch.compile, and the one-hot N x C x D update the public estimator uses (diagonal only)."""
from bench.runner import check_rows

FAMILY = "update"


def test_update_class_distribution(case, measure):
    rows = measure(case)
    check_rows(rows)
