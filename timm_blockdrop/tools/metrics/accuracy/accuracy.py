"""Top-1 accuracy as an ``evaluate`` metric, vendored so ``evaluate.load`` works offline.

Same interface and output as the Hub's ``evaluate-metric/accuracy`` (``predictions``, ``references``,
optional ``normalize`` and ``sample_weight``; returns ``{'accuracy': float}``), computed with NumPy instead
of scikit-learn.
"""
import datasets
import evaluate
import numpy as np

_DESCRIPTION = 'Accuracy = (TP + TN) / (TP + TN + FP + FN): the fraction of predictions equal to the references.'
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): return the fraction correct (True, default) or the count correct (False).
    sample_weight (list of float): per-sample weights, default None.
Returns:
    accuracy (float or int): fraction (or count) of correct predictions.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation='',
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                'predictions': datasets.Value('int64'),
                'references': datasets.Value('int64'),
            }),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        total = float((correct * weights).sum())
        if normalize:
            return {'accuracy': total / float(weights.sum()) if len(correct) else 0.0}
        return {'accuracy': int(total) if sample_weight is None else total}
