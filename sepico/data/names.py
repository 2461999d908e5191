"""Dataset names, by the role a dataset can take in a run.

=====================  ==========================================================================
``SOURCES``            labelled training images
``TRAINING_TARGETS``   unlabelled training images, with a labelled split to evaluate on
``TARGETS``            every dataset a model can be evaluated on (the training targets and the
                       night evaluation sets)
``DAY_NIGHT_TARGETS``  training targets whose images each come with a daytime image of the same
                       scene (``method.day_night``)
=====================  ==========================================================================
"""
from sepico.data.real import REAL_DATASETS

DATASETS = ("synthetic",) + REAL_DATASETS
SOURCES = ("synthetic", "gta5", "synthia", "cityscapes")
TRAINING_TARGETS = ("synthetic", "cityscapes", "dark_zurich", "acdc")
TARGETS = TRAINING_TARGETS + ("nighttime_driving", "bdd100k_night")
DAY_NIGHT_TARGETS = ("dark_zurich", "acdc")  # correspondence files; reference images

__all__ = ["DATASETS", "DAY_NIGHT_TARGETS", "SOURCES", "TARGETS", "TRAINING_TARGETS"]
