from collections import defaultdict

from inventory.items import Item


class Stock:
    def __init__(self) -> None:
        self._counts: dict[str, int] = defaultdict(int)

    def receive(self, name: str, quantity: int) -> None:
        if quantity <= 0:
            raise ValueError(f"quantity must be positive, got {quantity}")
        self._counts[name] += quantity

    def ship(self, name: str, quantity: int) -> None:
        if self._counts[name] < quantity:
            raise ValueError(f"only {self._counts[name]} {name} in stock")
        self._counts[name] -= quantity

    def quantity(self, name: str) -> int:
        return self._counts[name]

    def value(self, items: dict[str, Item]) -> float:
        return sum(items[name].total_value(count) for name, count in self._counts.items())
