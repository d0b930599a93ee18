from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    name: str
    unit_price: float

    def total_value(self, quantity: int) -> float:
        return self.unit_price * quantity


def parse_item(line: str) -> Item:
    """Parse 'name,price' into an Item."""
    name, price = line.split(",")
    return Item(name.strip(), float(price))
