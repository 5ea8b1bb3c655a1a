"""TumorTrace: explainable 3D brain MRI classification (healthy / LGG / HGG).

See docs/ARCHITECTURE.md for the layout, the data flow and the contracts.
"""

from tumortrace.config import CLASSES

__all__ = ["CLASSES"]
__version__ = "0.1.0"
