"""What an artefact is and whether to trust it here.

* :mod:`~cellsdk.artefacts.resolve`: find and open an artefact (a file, the shipped model, the best one of a
  conversion folder) and reconcile its metadata;
* :mod:`~cellsdk.artefacts.manifest`: a conversion folder's ``manifest.json`` and the choice of artefact;
* :mod:`~cellsdk.artefacts.checkpoints`: a training checkpoint's metadata, torch-free;
* :mod:`~cellsdk.artefacts.info`: what a model says about itself (``cellsdk info``);
* :mod:`~cellsdk.artefacts.gate_status`: did it pass cellsdk's verification gate;
* :mod:`~cellsdk.artefacts.cpu_records`: was it verified on this CPU class;
* :mod:`~cellsdk.artefacts.selfcheck` and :mod:`~cellsdk.artefacts.verdicts`: its self-check on this machine and
  the per-user cache of verdicts;
* :mod:`~cellsdk.artefacts.trust`: the policy on load that combines them (warn once, or refuse when strict).

Examples:
    >>> from cellsdk.artefacts.resolve import default_model_path
    >>> default_model_path().suffix
    '.onnx'
"""
