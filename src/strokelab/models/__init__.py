"""What a task trains: networks + named inputs + named outputs + named loss terms (see ``models.base``)."""

from strokelab.models.base import OUTPUT_KINDS, LossTerm, Model, OutputSpec
from strokelab.models.chain import PseudoDWIChain
from strokelab.models.segmentation import RegressionModel, SegmentationModel

__all__ = ["OUTPUT_KINDS", "LossTerm", "Model", "OutputSpec", "PseudoDWIChain", "RegressionModel", "SegmentationModel"]
