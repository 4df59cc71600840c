#!/usr/bin/env python3
"""Writes data/demo_orders.jsonl, the bundled dataset of the main job (`kiln demo`).

The task: pull a customer order out of a free-form message into one line of JSON with fixed
keys in a fixed order: {"name": ..., "item": ..., "qty": N, "city": ...}. The answer is
checkable by exact match, SmolLM2-135M-Instruct does not produce that exact format unprompted
by examples, and a small LoRA fine-tune learns it. Deterministic (seeded); rerun to regenerate.

    python3 tools/make_demo_data.py [--rows 400] [--out data/demo_orders.jsonl]
"""
import argparse
import json
import random

NAMES = """Maria Liam Olivia Noah Emma Lucas Ava Mateo Sofia Ethan Mia Hugo Chloe Omar Yuki Priya
Jonas Elena Diego Amara Felix Ines Tomas Nora Ravi Lena Kofi Hana Arjun Clara Pablo Zoe Malik
Freya Victor Leila Anton Rosa Kenji Aisha""".split()
ITEMS = """apples candles notebooks batteries chairs lamps mugs towels pencils blankets bottles
cables helmets jackets kettles ladders mirrors napkins oranges pillows plates scarves shovels
sockets spoons tents tires umbrellas vases wallets baskets brushes buckets cushions drills
envelopes folders gloves hammers""".split()
CITIES = """Lyon Porto Oslo Denver Austin Kyoto Nairobi Lima Dublin Krakow Seville Boston Perth
Quito Hanoi Bergen Tucson Leeds Turin Accra Geneva Dakar Malmo Cusco Osaka Bilbao Tampa Cork
Ghent Split Graz Reno Fez Hobart Izmir Kazan Lagos Nantes Riga Tartu""".split()
TEMPLATES = [
    "Hi, this is {name}. Please send {qty} {item} to {city}.",
    "{name} from {city} wants {qty} {item}.",
    "Order for {name}: {qty} x {item}, shipping to {city}.",
    "Could you deliver {qty} {item} to {name} in {city}?",
    "I'd like to order {qty} {item}. Name: {name}. City: {city}.",
    "Ship {qty} {item} to {city} for {name}, thanks!",
    "{city} office here. {name} needs {qty} {item} by Friday.",
    "New request - customer {name}, {qty} {item}, deliver in {city}.",
    "Hello! {name} here, I need {qty} {item} sent over to {city} please.",
    "Please prepare {qty} {item}; they go to {name} in {city}.",
]
SYSTEM = "Extract the order as JSON with the keys name, item, qty and city."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--out", default="data/demo_orders.jsonl")
    a = ap.parse_args()
    rng = random.Random(2026)
    seen = set()
    with open(a.out, "w") as f:
        while len(seen) < a.rows:
            name, item, city = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CITIES)
            qty = rng.randint(1, 60)
            msg = rng.choice(TEMPLATES).format(name=name, item=item, qty=qty, city=city)
            if msg in seen:
                continue
            seen.add(msg)
            answer = json.dumps({"name": name, "item": item, "qty": qty, "city": city})
            row = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": msg},
                                {"role": "assistant", "content": answer}]}
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
