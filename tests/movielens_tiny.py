"""A hand-made dataset in ML-100K's original format (u.data, u.user, u.item, u.genre, u.info).

Small enough to reason about line by line, in the exact file formats of GroupLens' ML-100K, so
the reader and ``limaml data prepare`` can be tested without the real dataset beside the checkout.
"""
from __future__ import annotations

import os
from typing import List

# u.data: user \t item \t rating \t timestamp (12 lines, no duplicates, ends with a line break).
RATINGS: List[str] = [
    f"{u}\t{i}\t{r}\t{ts}" for u, i, r, ts in [
        (1, 1, 5, 881250949), (1, 2, 3, 881250950), (2, 1, 4, 881250951), (2, 3, 1, 881250952),
        (3, 2, 2, 881250953), (3, 3, 5, 881250954), (4, 1, 4, 881250955), (4, 2, 4, 881250956),
        (5, 3, 3, 881250957), (5, 1, 1, 881250958), (6, 2, 5, 881250959), (6, 3, 4, 881250960),
    ]
]
USERS: List[str] = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|23|M|writer|32067",
                    "4|24|M|technician|43537", "5|33|F|other|15213", "6|42|M|executive|98101"]
GENRES: List[str] = ["unknown|0", "Action|1", "Comedy|2"]
ITEMS: List[str] = ["1|Toy Story (1995)|01-Jan-1995||http://x/1|0|0|1",
                    "2|GoldenEye (1995)|01-Jan-1995||http://x/2|0|1|0",
                    "3|Four Rooms (1995)|01-Jan-1995||http://x/3|0|1|1"]


def info_text(ratings: int = len(RATINGS), users: int = len(USERS), items: int = len(ITEMS)) -> str:
    """``u.info`` declaring the given counts (default: the hand-made files' own)."""
    return f"{users} users\n{items} items\n{ratings} ratings\n"


def write_ml100k(folder: str) -> str:
    """Writes the hand-made ML-100K files into ``folder`` (created) and returns it."""
    os.makedirs(folder, exist_ok=True)
    files = {"u.data": RATINGS, "u.user": USERS, "u.item": ITEMS, "u.genre": GENRES}
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w", encoding="latin-1", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "u.info"), "w") as f:
        f.write(info_text())
    return folder
