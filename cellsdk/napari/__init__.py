"""cellsdk in napari: a dock widget that classifies the cells of an image layer (``pip install 'cellsdk[napari]'``).

The plugin is declared in ``napari.yaml`` (npe2) and found through the ``napari.manifest`` entry point; napari
imports :mod:`cellsdk.napari.widget` (Qt) only when the widget is opened. :mod:`cellsdk.napari.cells` holds the
work without Qt (boxes from points and shapes, classification, the table, the differential count, the CSV).

Examples:
    >>> import cellsdk.napari.cells as cells
    >>> cells.default_cell_size.__name__
    'default_cell_size'
"""

__all__: list[str] = []
