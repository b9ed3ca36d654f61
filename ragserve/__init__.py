"""ragserve: a KServe-based model serving bundle for retrieval-augmented generation.

The component packages (``ragserve.predictors``, ``ragserve.transformers``,
``ragserve.pipelines``) live in folders at the repository root; an installed
wheel places them inside this package (pyproject's ``package-dir``).
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout (editable install) the component folders sit next to
# this package, not inside it. ``transformers/`` must stay a namespace folder (no
# __init__.py) so that it never shadows Hugging Face ``transformers`` when Python
# runs from the repository root -- and setuptools' editable finder cannot map a
# namespace sub-package. Adding the checkout root to this package's search path
# resolves all three folders the same way an installed wheel does.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "predictors").is_dir():
    __path__.append(str(_checkout))  # type: ignore[name-defined]
