"""The versioned price book shared by the router (caps), the planner (reservations) and billing."""

from stepline_pricebook.book import (
    ModelPrice,
    PriceBook,
    PriceBookError,
    Tokens,
    default_path,
)

__all__ = ["ModelPrice", "PriceBook", "PriceBookError", "Tokens", "default_path"]
