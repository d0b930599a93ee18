import os


def read_lines(path):
    """Return the lines of a text file without trailing newlines."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def count_words(path):
