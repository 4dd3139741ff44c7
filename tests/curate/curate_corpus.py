"""Small, deterministic test documents for the curate tests: prose that passes the web filters and
variants that each break one rule."""

from __future__ import annotations

import json
import random
from pathlib import Path

SENTENCES = [
    "The river that runs through the old town was once the main road for traders and their boats.",
    "Most of the houses along the water were built with stone taken from the hills to the north.",
    "In the spring, farmers bring their goods to the market that opens every morning at dawn.",
    "A small museum near the bridge tells the story of the people who settled here long ago.",
    "Visitors often stop at the bakery on the corner to taste the bread that is made with local grain.",
    "The library keeps maps and letters that show how the town grew over three hundred years.",
    "Children learn to swim in the lake during the summer, when the water is calm and warm.",
    "Every autumn the streets fill with music, and the festival draws guests from distant cities.",
    "The church on the hill has a bell that can be heard across the whole valley on a clear day.",
    "Teachers at the school organise walks so that pupils can study the birds and plants of the region.",
    "An old mill still stands at the edge of the forest, although it stopped working many decades ago.",
    "Local historians argue about the year the first wooden bridge was replaced with one of iron.",
    "During the winter, the hills are covered with snow and families go sledding after lunch.",
    "The railway arrived late in the century and changed the way goods moved to and from the coast.",
    "Fishermen still mend their nets on the quay, talking about the weather and the price of fuel.",
    "A new path along the river makes it easy to cycle from the station to the villages upstream.",
    "Many of the shops have been run by the same families for four or five generations.",
    "The town council meets once a month to discuss roads, schools and the care of public gardens.",
    "Artists rent rooms in the former warehouse and open their studios to the public on Sundays.",
    "Scientists from the university measure the quality of the water at several points each week.",
    "The market square is paved with small round stones that become slippery when it rains.",
    "Old photographs show that the harbour was much larger before the sea level started to fall.",
    "A choir practises in the hall every Thursday evening and gives a concert before the holidays.",
    "Some of the oldest trees in the park were planted by a doctor who lived in the square.",
    "Hikers who climb to the top of the ridge can see the towers of three other towns on the plain.",
    "The bus to the city leaves every hour and takes a little less than forty minutes.",
    "Restaurants near the water serve fish that was caught the same morning by boats from the harbour.",
    "Each house in the lane has a painted door, and the colours are chosen by the owners themselves.",
    "The hospital was built with money raised by the residents after a fire destroyed the old one.",
    "On quiet evenings, the sound of the river can be heard from almost every street in the centre.",
    "Students from abroad come to study the architecture of the houses with their steep wooden roofs.",
    "A long wall once protected the town, and parts of it can still be seen behind the gardens.",
    "The weekly newspaper reports on sports, local politics and the results of the flower show.",
    "Engineers have proposed a plan to protect the lower streets against floods in the coming years.",
    "Bees are kept on the roof of the town hall, and the honey is sold at the autumn fair.",
    "Walking tours start at the fountain and end at the tower that overlooks the harbour.",
    "Records kept by the parish describe the names and trades of the families who lived here.",
    "The theatre reopened after a long restoration and now shows plays in two languages.",
    "A ferry crosses the lake twice a day in summer, carrying cyclists and walkers to the far shore.",
    "The smell of fresh coffee drifts from the cafe that opens before the first train leaves.",
]


def prose(seed: int, sentences: int = 10) -> str:
    """English prose of distinct sentences, three or four to a line: passes the web filters."""
    rng = random.Random(seed)
    chosen = rng.sample(SENTENCES, sentences)
    lines, i = [], 0
    while i < len(chosen):
        step = rng.choice((3, 4))
        lines.append(" ".join(chosen[i : i + step]))
        i += step
    return "\n".join(lines)


def write_jsonl(path: Path, records: list[dict | str | bytes]) -> Path:
    """One record a line: dicts as JSON, strings and bytes as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for r in records:
            if isinstance(r, dict):
                fh.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
            elif isinstance(r, str):
                fh.write(r.encode() + b"\n")
            else:
                fh.write(r + b"\n")
    return path


def mixed_docs(prefix: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` documents: mostly good prose, with short, repetitive and curly-bracket ones mixed in."""
    docs = []
    for i in range(n):
        kind = i % 5
        if kind == 1:
            text = prose(seed * 1000 + i, sentences=2)  # under 50 words
        elif kind == 2:
            text = "\n".join(["Buy cheap watches online today."] * 12)
        elif kind == 3:
            text = prose(seed * 1000 + i) + "\nfunction f() { return 1; } is a line of code in this text."
        else:
            text = prose(seed * 1000 + i)
        docs.append({"id": f"{prefix}-{i}", "text": text, "url": f"https://site{i % 3}.example.org/{prefix}/{i}"})
    return docs
