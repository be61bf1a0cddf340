"""A port of datacomp's geographic evaluation (mlfoundations/datacomp, commit 4a8df19,
``eval_utils/fairness_eval.py``: ``TopKAccuracy``, ``DollarStreetEvaluator``, ``GeoDEEvaluator`` and
the tail of ``evaluate_dollar_street_dataset`` / ``evaluate_geode_dataset``), with the pieces of
WILDS 2.0.0 it runs on (``Metric`` / ``ElementwiseMetric`` / ``Accuracy``, ``CombinatorialGrouper``,
``WILDSDataset.standard_group_eval``, ``get_counts``, ``minimum``) and datacomp's own replacement of
WILDS's ``avg_over_groups`` (``eval_utils/wilds_eval.py``), and the top-k step of
``evaluate_webdataset`` (``eval_utils/wds_eval.py``) and CLIP_benchmark's ``accuracy``.

The logic is kept as written; only what needs a model, ``webdataset`` or the ``wilds`` package is
replaced: the caller passes the logits and targets (what ``zsc.run_classification`` returns) and
the per-sample ``.npy`` metadata vectors (what ``create_metadata_loader`` yields), read here from
the shards with ``tarfile``. Used by tests/test_geo.py only.
"""

from __future__ import annotations

import copy
import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch


# ----------------------------------------------------------------- wilds.common.utils (2.0.0)

def get_counts(g, n_groups):
    unique_groups, unique_counts = torch.unique(g, sorted=False, return_counts=True)
    counts = torch.zeros(n_groups, device=g.device)
    counts[unique_groups] = unique_counts.float()
    return counts


# datacomp eval_utils/wilds_eval.py: "Replace wilds function that requires torch_scatter"
def avg_over_groups(v, g, n_groups):
    assert v.device == g.device
    assert v.numel() == g.numel()
    group_count = get_counts(g, n_groups)
    # group_avgs = torch_scatter.scatter(src=v, index=g, dim_size=n_groups, reduce='mean')
    group_avgs = torch.zeros(n_groups, dtype=torch.float, device=v.device).scatter_(
        0, index=g, src=v, reduce="add"
    )
    group_avgs /= group_count
    return group_avgs, group_count


def minimum(numbers, empty_val=0.):
    if isinstance(numbers, torch.Tensor):
        if numbers.numel() == 0:
            return torch.tensor(empty_val, device=numbers.device)
        else:
            return numbers[~torch.isnan(numbers)].min()
    elif isinstance(numbers, np.ndarray):
        if numbers.size == 0:
            return np.array(empty_val)
        else:
            return np.nanmin(numbers)
    else:
        if len(numbers) == 0:
            return empty_val
        else:
            return min(numbers)


def numel(obj):
    if torch.is_tensor(obj):
        return obj.numel()
    elif isinstance(obj, list):
        return len(obj)
    else:
        raise TypeError("Invalid type for numel")


# ---------------------------------------------------------- wilds.common.metrics.metric (2.0.0)

class Metric:
    def __init__(self, name):
        self._name = name

    @property
    def name(self):
        return self._name

    @property
    def agg_metric_field(self):
        return f'{self.name}_all'

    def group_metric_field(self, group_idx):
        return f'{self.name}_group:{group_idx}'

    @property
    def worst_group_metric_field(self):
        return f'{self.name}_wg'

    def group_count_field(self, group_idx):
        return f'count_group:{group_idx}'

    def compute(self, y_pred, y_true, return_dict=True):
        if numel(y_true) == 0:
            if hasattr(y_true, 'device'):
                agg_metric = torch.tensor(0., device=y_true.device)
            else:
                agg_metric = torch.tensor(0.)
        else:
            agg_metric = self._compute(y_pred, y_true)
        if return_dict:
            results = {
                self.agg_metric_field: agg_metric.item()
            }
            return results
        else:
            return agg_metric

    def compute_group_wise(self, y_pred, y_true, g, n_groups, return_dict=True):
        group_metrics, group_counts, worst_group_metric = self._compute_group_wise(y_pred, y_true, g, n_groups)
        if return_dict:
            results = {}
            for group_idx in range(n_groups):
                results[self.group_metric_field(group_idx)] = group_metrics[group_idx].item()
                results[self.group_count_field(group_idx)] = group_counts[group_idx].item()
            results[self.worst_group_metric_field] = worst_group_metric.item()
            return results
        else:
            return group_metrics, group_counts, worst_group_metric


class ElementwiseMetric(Metric):
    def _compute(self, y_pred, y_true):
        element_wise_metrics = self._compute_element_wise(y_pred, y_true)
        avg_metric = element_wise_metrics.mean()
        return avg_metric

    def _compute_group_wise(self, y_pred, y_true, g, n_groups):
        element_wise_metrics = self._compute_element_wise(y_pred, y_true)
        group_metrics, group_counts = avg_over_groups(element_wise_metrics, g, n_groups)
        worst_group_metric = self.worst(group_metrics[group_counts > 0])
        return group_metrics, group_counts, worst_group_metric

    @property
    def agg_metric_field(self):
        return f'{self.name}_avg'


# ----------------------------------------------------- wilds.common.metrics.all_metrics (2.0.0)

class Accuracy(ElementwiseMetric):
    def __init__(self, prediction_fn=None, name=None):
        self.prediction_fn = prediction_fn
        if name is None:
            name = 'acc'
        super().__init__(name=name)

    def _compute_element_wise(self, y_pred, y_true):
        if self.prediction_fn is not None:
            y_pred = self.prediction_fn(y_pred)
        return (y_pred == y_true).float()

    def worst(self, metrics):
        return minimum(metrics)


# -------------------------------------------------------------- wilds.common.grouper (2.0.0)

class CombinatorialGrouper:
    def __init__(self, dataset, groupby_fields):
        datasets = [dataset]
        metadata_fields = datasets[0].metadata_fields
        largest_metadata_map = copy.deepcopy(datasets[0].metadata_map)
        self.groupby_fields = groupby_fields
        if groupby_fields is None:
            self._n_groups = 1
        else:
            self.groupby_field_indices = [i for (i, field) in enumerate(metadata_fields) if field in groupby_fields]
            if len(self.groupby_field_indices) != len(self.groupby_fields):
                raise ValueError('At least one group field not found in dataset.metadata_fields')

            metadata_array = torch.cat([dataset.metadata_array for dataset in datasets])
            grouped_metadata = metadata_array[:, self.groupby_field_indices]
            if not isinstance(grouped_metadata, torch.LongTensor):
                grouped_metadata_long = grouped_metadata.long()
                if not torch.all(grouped_metadata == grouped_metadata_long):
                    warnings.warn(f'CombinatorialGrouper: converting metadata with fields [{", ".join(groupby_fields)}] into long')
                grouped_metadata = grouped_metadata_long

            for idx, field in enumerate(self.groupby_fields):
                min_value = grouped_metadata[:, idx].min()
                if min_value < 0:
                    raise ValueError(f"Metadata for CombinatorialGrouper cannot have values less than 0: {field}, {min_value}")
                if min_value > 0:
                    warnings.warn(f"Minimum metadata value for CombinatorialGrouper is not 0 ({field}, {min_value}). This will result in empty groups")

            assert grouped_metadata.min() >= 0, "Group numbers cannot be negative."
            self.cardinality = 1 + torch.max(grouped_metadata, dim=0)[0]
            cumprod = torch.cumprod(self.cardinality, dim=0)
            self._n_groups = cumprod[-1].item()
            self.factors_np = np.concatenate(([1], cumprod[:-1]))
            self.factors = torch.from_numpy(self.factors_np)
            self.metadata_map = largest_metadata_map

    @property
    def n_groups(self):
        return self._n_groups

    def metadata_to_group(self, metadata, return_counts=False):
        if self.groupby_fields is None:
            groups = torch.zeros(metadata.shape[0], dtype=torch.long)
        else:
            groups = metadata[:, self.groupby_field_indices].long() @ self.factors

        if return_counts:
            group_counts = get_counts(groups, self._n_groups)
            return groups, group_counts
        else:
            return groups

    def group_str(self, group):
        if self.groupby_fields is None:
            return 'all'
        n = len(self.factors_np)
        metadata = np.zeros(n)
        for i in range(n - 1):
            metadata[i] = (group % self.factors_np[i + 1]) // self.factors_np[i]
        metadata[n - 1] = group // self.factors_np[n - 1]
        group_name = ''
        for i in reversed(range(n)):
            meta_val = int(metadata[i])
            if self.metadata_map is not None:
                if self.groupby_fields[i] in self.metadata_map:
                    meta_val = self.metadata_map[self.groupby_fields[i]][meta_val]
            group_name += f'{self.groupby_fields[i]} = {meta_val}, '
        group_name = group_name[:-2]
        return group_name

    def group_field_str(self, group):
        return self.group_str(group).replace('=', ':').replace(',', '_').replace(' ', '')


# ----------------------------------------------------- wilds.datasets.wilds_dataset (2.0.0)

class WILDSDataset:
    @property
    def metadata_fields(self):
        return self._metadata_fields

    @property
    def metadata_array(self):
        return self._metadata_array

    @property
    def metadata_map(self):
        return getattr(self, '_metadata_map', None)

    @staticmethod
    def standard_group_eval(metric, grouper, y_pred, y_true, metadata, aggregate=True):
        results, results_str = {}, ''
        if aggregate:
            results.update(metric.compute(y_pred, y_true))
            results_str += f"Average {metric.name}: {results[metric.agg_metric_field]:.3f}\n"
        g = grouper.metadata_to_group(metadata)
        group_results = metric.compute_group_wise(y_pred, y_true, g, grouper.n_groups)
        for group_idx in range(grouper.n_groups):
            group_str = grouper.group_field_str(group_idx)
            group_metric = group_results[metric.group_metric_field(group_idx)]
            group_counts = group_results[metric.group_count_field(group_idx)]
            results[f'{metric.name}_{group_str}'] = group_metric
            results[f'count_{group_str}'] = group_counts
            if group_results[metric.group_count_field(group_idx)] == 0:
                continue
            results_str += (
                f'  {grouper.group_str(group_idx)}  '
                f"[n = {group_results[metric.group_count_field(group_idx)]:6.0f}]:\t"
                f"{metric.name} = {group_results[metric.group_metric_field(group_idx)]:5.3f}\n")
        results[f'{metric.worst_group_metric_field}'] = group_results[f'{metric.worst_group_metric_field}']
        results_str += f"Worst-group {metric.name}: {group_results[metric.worst_group_metric_field]:.3f}\n"
        return results, results_str


# ------------------------------------------------------- datacomp eval_utils/wilds_eval.py

class WILDSEvaluator(WILDSDataset):
    def __init__(self, metadata):
        self._metadata_array = metadata


# ---------------------------------------------------- datacomp eval_utils/fairness_eval.py

class TopKAccuracy(Accuracy):
    def __init__(self, prediction_fn=None, name=None):
        if name is None:
            name = "acc_topk"
        super().__init__(name=name)

    def _compute_element_wise(self, y_pred, y_true):
        if self.prediction_fn is not None:
            y_pred = self.prediction_fn(y_pred)
        return (y_pred == y_true.unsqueeze(-1)).any(-1).float()


class DollarStreetEvaluator(WILDSEvaluator):
    def __init__(self, metadata):
        super().__init__(metadata)
        self._metadata_fields = ["income_ds", "income_meta", "region"]
        self._eval_grouper = CombinatorialGrouper(
            dataset=self, groupby_fields=["income_ds"]
        )

    def eval(self, y_pred, y_true, metadata, prediction_fn=None):
        metric = TopKAccuracy(prediction_fn=prediction_fn, name="acc_top5")
        return self.standard_group_eval(
            metric, self._eval_grouper, y_pred, y_true, metadata
        )


class GeoDEEvaluator(WILDSEvaluator):
    def __init__(self, metadata):
        super().__init__(metadata)
        self._metadata_fields = ["region", "country"]
        self._eval_grouper = CombinatorialGrouper(
            dataset=self, groupby_fields=["region"]
        )

    def eval(self, y_pred, y_true, metadata, prediction_fn=None):
        metric = Accuracy(prediction_fn=prediction_fn)
        return self.standard_group_eval(
            metric, self._eval_grouper, y_pred, y_true, metadata
        )


EVALUATORS = {"fairness/dollar_street": DollarStreetEvaluator, "fairness/geode": GeoDEEvaluator}


# ------------------------------------------- CLIP_benchmark metrics/zeroshot_classification.py

def accuracy(output, target, topk=(1,)):
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    # as written: float(...sum(0, keepdim=True).cpu().numpy()); NumPy 2 refuses float() of a 1-element
    # array, so the one element is taken with .item() (the same number)
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy().item()) / n for k in topk]


# ------------------------------------------- evaluate_dollar_street_dataset / evaluate_geode_dataset

def shard_metadata(files):
    """The (cls, npy) pairs create_metadata_loader yields, in shard order: ``to_tuple("cls", "npy")``."""
    labels, metas = [], []
    for path in files:
        with tarfile.open(path, "r:") as tf:
            members = {}
            for m in tf:
                if m.isfile():
                    members[m.name] = tf.extractfile(m).read()
        keys = list(dict.fromkeys(n.split(".", 1)[0] for n in members))  # tar order, as webdataset reads
        for k in keys:
            labels.append(int(members[f"{k}.cls"].decode()))
            metas.append(np.load(io.BytesIO(members[f"{k}.npy"])))
    return labels, metas


def evaluate(task, logits, target, files):
    """The metrics datacomp's ``evaluate_<task>_dataset`` returns, for the given logits (N x C)
    and targets (N), with the metadata read from the shards ``files``."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    target = torch.as_tensor(np.array(target), dtype=torch.long)
    with torch.no_grad():
        pred = logits.argmax(axis=1).cpu()
    if logits.shape[1] >= 5:
        acc1, acc5 = accuracy(logits, target, topk=(1, 5))
    else:
        (acc1,) = accuracy(logits, target, topk=(1,))
        acc5 = None
    metrics = {"acc1": acc1, "acc5": acc5}
    if task == "fairness/dollar_street":  # return_topk=5
        with torch.no_grad():
            _, topk_pred = torch.topk(logits, int(5), dim=1)
            y_pred = topk_pred.cpu()
    else:
        y_pred = pred
    _, metadata_array = shard_metadata(files)
    metadata = torch.cat([torch.as_tensor(np.asarray(m)).unsqueeze(0) for m in metadata_array])
    evaluator = EVALUATORS[task](metadata)
    metrics.update(evaluator.eval(y_pred, target, metadata)[0])
    return metrics


def shard_files(root: Path) -> list[Path]:
    n = int((Path(root) / "test" / "nshards.txt").read_text().strip())
    return [Path(root) / "test" / f"{i}.tar" for i in range(n)]
