"""What the commands that run a deployed model share: loading it and saying which artefact runs and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cellsdk.artefacts.resolve import provenance
from cellsdk.cli.process import show_warnings_in_one_line

__all__ = ["load_classifier"]


def load_classifier(model_path: Path | None, *, backend: str | None, device: str, threads: int | None, top_k: int,
                    strict: bool, ood: str) -> Any:
    """:meth:`cellsdk.Classifier.load`, with one ``using ...`` line on stderr (the artefact and its verification).

    Examples:
        >>> load_classifier(None, backend=None, device="cpu", threads=1, top_k=1, strict=False, ood="flag").labels[0]
        'basophil'
    """
    from cellsdk.classifier import Classifier

    show_warnings_in_one_line()
    classifier = Classifier.load(model_path, backend=backend, device=device, top_k=top_k, strict=strict, ood=ood,
                                 threads=threads)
    click.echo(provenance(classifier.path, classifier.chosen, classifier.verification), err=True)
    return classifier
