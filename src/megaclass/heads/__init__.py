"""The class-sharded classifier head."""

from megaclass.heads.classifier import ClassifierHead, HeadOutput

__all__ = ["ClassifierHead", "HeadOutput"]
