"""strokelab: predict the final stroke infarct from acute CT perfusion."""

__version__ = "0.1.0"
