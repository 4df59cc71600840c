#!/usr/bin/env python3
"""Writes data/demo_prefs.jsonl, the bundled preference set of the DPO/ORPO demo.

Each row is {"prompt", "chosen", "rejected"}: a short question; the chosen answer is correct and
direct; the rejected one is wrong (a near-miss number, another country's capital, the smaller
of two numbers) or an unhelpful refusal. The held-out split asks different questions of the
same kinds, so a rise of held-out reward accuracy means the tuned model prefers correct, direct
answers it was not shown, rather than having memorized pairs. Deterministic (seeded); rerun to
regenerate.

    python3 tools/make_pref_data.py [--rows 300] [--out data/demo_prefs.jsonl]
"""
import argparse
import json
import random

CAPITALS = [tuple(c.strip().split(":")) for c in """France:Paris, Germany:Berlin, Italy:Rome,
Spain:Madrid, Portugal:Lisbon, Japan:Tokyo, China:Beijing, India:New Delhi, Egypt:Cairo,
Kenya:Nairobi, Peru:Lima, Chile:Santiago, Canada:Ottawa, Mexico:Mexico City, Norway:Oslo,
Sweden:Stockholm, Finland:Helsinki, Poland:Warsaw, Greece:Athens, Turkey:Ankara, Russia:Moscow,
Ireland:Dublin, Austria:Vienna, Hungary:Budapest, Cuba:Havana, Argentina:Buenos Aires,
Colombia:Bogota, Thailand:Bangkok, Vietnam:Hanoi, Australia:Canberra, Belgium:Brussels,
Denmark:Copenhagen, Nigeria:Abuja, Ghana:Accra, Morocco:Rabat, Iran:Tehran, Iraq:Baghdad,
Nepal:Kathmandu, Ukraine:Kyiv, Romania:Bucharest""".split(",")]
REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I don't know. You should look it up yourself.",
    "That is not something I can answer.",
    "Why do you want to know? I'd rather not say.",
]
FACTS = [
    ("How many days are in a week?", "There are 7 days in a week."),
    ("How many legs does a spider have?", "A spider has 8 legs."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("How many sides does a triangle have?", "A triangle has 3 sides."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What do bees make?", "Bees make honey."),
    ("How many wheels does a bicycle have?", "A bicycle has 2 wheels."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
]


def arithmetic(rng):
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    op = rng.choice(["+", "-", "*"]) if a < 13 and b < 13 else rng.choice(["+", "-"])
    v = {"+": a + b, "-": a - b, "*": a * b}[op]
    wrong = v + rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
    q = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Please calculate {a} {op} {b}."])
    return q.format(a=a, op=op, b=b), f"{a} {op} {b} = {v}.", f"{a} {op} {b} = {wrong}."


def capital(rng):
    (country, city), (_, other) = rng.sample(CAPITALS, 2)
    q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."])
    return q.format(c=country), f"The capital of {country} is {city}.", f"The capital of {country} is {other}."


def larger(rng):
    a, b = rng.sample(range(3, 999), 2)
    q = rng.choice(["Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?"])
    big, small = max(a, b), min(a, b)
    return q.format(a=a, b=b), f"{big} is larger than {small}.", f"{small} is larger than {big}."


def refusal(rng):
    q, a = rng.choice(FACTS)
    return q, a, rng.choice(REFUSALS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--out", default="data/demo_prefs.jsonl")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    kinds = [arithmetic, capital, larger, refusal]
    seen, rows = set(), []
    while len(rows) < a.rows:
        prompt, chosen, rejected = rng.choice(kinds)(rng)
        # Each question once, so the held-out split never repeats a training prompt.
        if prompt in seen or chosen == rejected:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} rows to {a.out}")


if __name__ == "__main__":
    main()
