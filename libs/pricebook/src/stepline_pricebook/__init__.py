"""The versioned price book shared by the router (caps), the planner (reservations) and billing.

Prices come from the maintained model catalog (`genai-prices`) under the local override layer
(`deploy/config/pricebook.toml`); see `stepline_pricebook.catalog` for what maps and what not.
"""

from stepline_pricebook.book import PriceBook, PriceBookError, default_path
from stepline_pricebook.catalog import CATALOG_PACKAGE, Catalog, load_catalog
from stepline_pricebook.prices import (
    ModelEntry,
    ModelPrice,
    PriceSource,
    PriceTier,
    Tokens,
    max_price,
)

__all__ = [
    "CATALOG_PACKAGE",
    "Catalog",
    "ModelEntry",
    "ModelPrice",
    "PriceBook",
    "PriceBookError",
    "PriceSource",
    "PriceTier",
    "Tokens",
    "default_path",
    "load_catalog",
    "max_price",
]
