"""TumorTrace: explainable 3D brain MRI classification (healthy / LGG / HGG).

See DESIGN.md in the shared folder and the README for the layout and the contracts.
"""

from tumortrace.config import CLASSES

__all__ = ["CLASSES"]
__version__ = "0.1.0"
