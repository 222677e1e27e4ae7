"""Evaluation harness: image classification with every pooling method on one backbone (the paper's tables).

    crosslayer.eval.classify(data_dir, "crosslayer", side=448) -> record dict (accuracy as a fraction)
"""

from crosslayer.eval.classify import classify
from crosslayer.eval.extract import extract
from crosslayer.eval.manifest import Dataset, ManifestError, load_manifest
from crosslayer.eval.methods import METHODS, MethodConfig
from crosslayer.eval.record import RecordError, read_record, write_record

__all__ = ["classify", "extract", "Dataset", "ManifestError", "load_manifest", "METHODS", "MethodConfig",
           "RecordError", "read_record", "write_record"]
