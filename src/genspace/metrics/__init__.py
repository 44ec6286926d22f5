"""Sample metrics (energy distance, MMD, sliced Wasserstein, floors, mean log-density) and image
metrics in the feature space of a classifier genspace trains itself (Fréchet distance, KID,
precision/recall, class accuracy; all of them at once: ``genspace.metrics.image_metrics.image_metrics``)."""

from genspace.metrics.classifier import ClassifierConfig, FeatureClassifier, get_classifier, train_classifier
from genspace.metrics.image_metrics import (
    KIDResult,
    PrecisionRecall,
    class_accuracy,
    fid_with_inception,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from genspace.metrics.sample_metrics import (
    MeanWithError,
    MetricWithFloor,
    energy_distance,
    mean_log_density,
    median_bandwidth,
    metric_with_floor,
    mmd,
    sliced_wasserstein,
)

__all__ = [
    "FeatureClassifier",
    "ClassifierConfig",
    "train_classifier",
    "get_classifier",
    "frechet_distance",
    "kernel_inception_distance",
    "KIDResult",
    "precision_recall",
    "PrecisionRecall",
    "class_accuracy",
    "fid_with_inception",
    "energy_distance",
    "mmd",
    "median_bandwidth",
    "sliced_wasserstein",
    "metric_with_floor",
    "MetricWithFloor",
    "mean_log_density",
    "MeanWithError",
]
