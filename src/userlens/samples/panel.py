"""The synthetic reference panel that ships with userlens, so Shopping Intent works out of the box.

3,000 generated people, each with a behaviour sequence (the personas and behaviour pools of the
sample dataset, `samples/sequences.py`: Korean, Japanese and English store names, products and apps),
a gender, an age group and shopping-interest categories. Demographics and interests follow the
persona, as they would in real data: beauty shoppers are mostly women in their 20s-40s, gamers mostly
young men, baby-goods shoppers mostly women in their 30s. So a Task that finds a persona in a
customer's own data finds the same kind of people in the panel, and the profile shows who they are.

Deterministic for a seed. The files have the panel import format (README, "Reference panels").
"""

from __future__ import annotations

import random

from userlens.samples.sequences import INTERESTS, LANGS, behaviours

NAME = "userlens-synthetic-v1"
SIZE = 3000
SEED = 20261122
SEQUENCES_KEY = "panel/sequences.csv"  # in the sample bucket
ATTRIBUTES_KEY = "panel/attributes.tsv"
AGE_GROUPS = ("10s", "20s", "30s", "40s", "50s", "60s+")

# persona -> (shopping-interest category, P(female), weights of AGE_GROUPS)
PERSONAS: dict[str, tuple[str, float, tuple[int, ...]]] = {
    "running": ("Sports>Running", 0.45, (0, 3, 4, 3, 1, 0)),
    "gaming": ("Digital>Video games", 0.2, (4, 5, 2, 1, 0, 0)),
    "beauty": ("Beauty>Skincare & makeup", 0.85, (1, 4, 3, 2, 1, 0)),
    "coffee": ("Food>Coffee", 0.55, (0, 3, 3, 2, 1, 1)),
    "travel": ("Travel>Luggage & travel goods", 0.5, (0, 1, 3, 3, 2, 1)),
    "baby": ("Baby>Diapers & formula", 0.75, (0, 2, 5, 1, 0, 0)),
}
assert set(PERSONAS) == set(INTERESTS)
# Interests that no behaviour shows, tied to demographics only (a Task cannot see them directly).
FASHION = {"F": "Fashion>Women's clothing", "M": "Fashion>Men's clothing"}
KITCHEN = "Home>Kitchen"
COMICS = "Books>Comics"


def generate(n_users: int = SIZE, seed: int = SEED) -> tuple[str, str]:
    """(sequence file text, attribute file text with its header line)."""
    rng = random.Random(seed)
    names = list(PERSONAS)
    seq_lines: list[str] = []
    attr_lines = ["user_id\tgender\tage_group\tinterests"]
    for i in range(n_users):
        user_id = f"p{100000 + i}"
        lang = rng.choices(LANGS, weights=(5, 3, 2))[0]
        personas = rng.sample(names, rng.choice((1, 1, 2, 3)))
        category, p_female, age_weights = PERSONAS[personas[0]]  # the main persona sets demographics
        gender = "F" if rng.random() < p_female else "M"
        age = rng.choices(AGE_GROUPS, weights=age_weights)[0]
        # Declared interests are imperfect, as surveys and purchase logs are: each persona's category
        # is kept with probability 0.9, and a few interests come from demographics alone.
        interests = [PERSONAS[p][0] for p in personas if rng.random() < 0.9]
        if rng.random() < 0.35:
            interests.append(FASHION[gender])
        if rng.random() < 0.2:
            interests.append(KITCHEN)
        if rng.random() < (0.35 if age in ("10s", "20s") else 0.08):
            interests.append(COMICS)
        seq_lines.append(f"{user_id}\t{'->'.join(behaviours(rng, lang, personas))}")
        attr_lines.append(f"{user_id}\t{gender}\t{age}\t{'|'.join(interests)}")
    return "\n".join(seq_lines) + "\n", "\n".join(attr_lines) + "\n"


def install(store, bucket: str = "sample") -> bool:
    """Writes the panel's files into the sample bucket (an example of the import format) if missing."""
    store.create_bucket(bucket)
    if store.exists(bucket, ATTRIBUTES_KEY):
        return False
    seq_text, attr_text = generate()
    store.write_bytes(bucket, SEQUENCES_KEY, seq_text.encode("utf-8"))
    store.write_bytes(bucket, ATTRIBUTES_KEY, attr_text.encode("utf-8"))
    return True
