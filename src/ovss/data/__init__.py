"""Benchmark datasets: readers for the official on-disk layouts, checks and conversions.

>>> ds = get_dataset("voc21", "/data")             # mmseg layout under /data/VOCdevkit/VOC2012
>>> s = ds[0]; gt = ds.load_gt(s)                    # canonical labels, ds.ignore_index ignored
"""
from .classnames import class_file, class_names, class_synonyms
from .datasets import (BENCHMARKS, LAYOUTS, SURVEY_ORDER, Benchmark, CLIPerDataset, Detectron2Dataset, Layout,
                       MMSegDataset, Sample, SegDataset, get_dataset, reduce_zero_label)
from .io import DataError, read_label, write_label

__all__ = ["BENCHMARKS", "LAYOUTS", "SURVEY_ORDER", "Benchmark", "CLIPerDataset", "DataError", "Detectron2Dataset",
           "Layout", "MMSegDataset", "Sample", "SegDataset", "class_file", "class_names", "class_synonyms",
           "get_dataset", "read_label", "reduce_zero_label", "write_label"]
