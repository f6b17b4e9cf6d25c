"""What the commands that run a deployed model share: loading it and saying which artefact runs and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cellsdk.cli.process import show_warnings_in_one_line

__all__ = ["load_classifier"]


def load_classifier(model_path: Path | None, *, backend: str | None, device: str, threads: int, top_k: int,
                    strict: bool, ood: str) -> Any:
    """:meth:`cellsdk.Classifier.load`, with one ``using ...`` line on stderr (the artefact and its verification)."""
    from cellsdk.classifier import Classifier

    show_warnings_in_one_line()
    classifier = Classifier.load(model_path, backend=backend, device=device, top_k=top_k, strict=strict, ood=ood,
                                 threads=threads)
    click.echo(classifier.provenance(), err=True)
    return classifier
