"""Generate the bundled PII-delegation data set (deterministic; output committed).

Each example is a user request that carries personal details (names, addresses,
health, money, work) which a privacy-conscious delegate should keep out of the
request it sends to an external model. Columns follow PUPA: user_query,
target_response, pii_units ('||'-separated). Regenerate with
``python -m grpo_trainer.embedded.bundled.build_pii_delegation``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).parent / "pii_delegation"

FIRST = ["Maria", "James", "Aiko", "Tomasz", "Fatima", "Liam", "Priya", "Mateo", "Grace", "Olu", "Hannah", "Yusuf",
         "Elena", "Kwame", "Sofia", "Daniel", "Mei", "Ravi", "Chloe", "Andrei"]
LAST = ["Lopez", "Okafor", "Tanaka", "Nowak", "Haddad", "Murphy", "Sharma", "Rossi", "Kim", "Adeyemi", "Schmidt",
        "Demir", "Petrova", "Mensah", "Garcia", "Cohen", "Wong", "Iyer", "Martin", "Popescu"]
STREETS = ["12 Elm Street", "48 Harbour Road", "7 Maple Avenue", "230 King Street", "19 Rue Victor Hugo",
           "5 Birch Lane", "88 Sunset Boulevard", "301 Oak Drive", "16 Mill Close", "72 Park Terrace"]
CITIES = ["Denver", "Leeds", "Osaka", "Krakow", "Lyon", "Cork", "Pune", "Turin", "Busan", "Accra"]
EMPLOYERS = ["Northwind Bank", "Acme Logistics", "St. Mary's Hospital", "Bluefin Software", "Greenleaf Foods",
             "Orion Insurance", "City Council", "Helios Energy"]


@dataclass(frozen=True)
class Template:
    query: str
    pii: tuple[str, ...]  # slot names whose values are PII units
    response: str
    details: tuple[str, ...]
    redacted: str = ""  # the task without any PII: what a privacy-conscious request says


TEMPLATES = [
    Template(
        "My name is {name} and I live at {street}, {city}. I was just diagnosed with {detail}. "
        "Can you suggest a simple weekly meal plan that suits my condition?",
        ("name", "street", "detail"),
        "A weekly meal plan for someone managing {detail}: build each meal around vegetables, lean protein and "
        "whole grains, keep portions regular, limit added sugar and salt, and review the plan with your doctor.",
        ("type 2 diabetes", "high blood pressure", "coeliac disease", "high cholesterol", "gout"),
        redacted='Suggest a simple weekly meal plan for someone managing a chronic health condition.',
    ),
    Template(
        "I'm {name}, I work at {employer} and earn {detail} a year. Please draft a short email to my manager "
        "asking for a salary review.",
        ("name", "employer", "detail"),
        "Subject: Request for a salary review. Dear manager, I would like to schedule a conversation about my "
        "compensation, given my responsibilities and results this year. Could we find a time in the coming weeks? "
        "Kind regards.",
        ("$52,000", "$68,500", "£41,000", "€57,300", "$94,000"),
        redacted='Draft a short email to a manager asking for a salary review.',
    ),
    Template(
        "Write a polite letter to my landlord about a broken heater at {street}, {city}. Sign it as {name}, "
        "and mention that my phone is {detail}.",
        ("street", "name", "detail"),
        "Dear landlord, I am writing to report that the heater in my flat is broken and the rooms are getting "
        "cold. Please arrange a repair as soon as possible and let me know when a technician can visit. "
        "Thank you, your tenant.",
        ("555-0142", "07700 900123", "+81 90 1234 5678", "555-0199", "+48 601 234 567"),
        redacted='Write a polite letter to a landlord about a broken heater.',
    ),
    Template(
        "My son {name} has {detail} and starts school in {city} next month. How should I explain his needs "
        "to the new teacher?",
        ("name", "detail", "city"),
        "Meet the teacher early, describe how the condition shows up day to day, share what helps and what to do "
        "in an emergency, give written instructions, and agree on how you will keep in touch.",
        ("a severe peanut allergy", "epilepsy", "ADHD", "asthma", "hearing loss"),
        redacted="How should a parent explain a child's medical needs to a new teacher?",
    ),
    Template(
        "I'm {name}. My bank account {detail} at {employer} was charged twice for the same purchase. "
        "Help me write a complaint to the bank.",
        ("name", "detail"),
        "Dear customer service, I noticed a duplicate charge for a single purchase on my account. Please "
        "investigate and refund the second charge, and confirm by email once it is resolved. Thank you.",
        ("ending 4471", "number 30-91-22 18843210", "ending 0937", "IBAN DE89 3704 0044", "ending 5520"),
        redacted='Help me write a complaint to a bank about a duplicate card charge.',
    ),
    Template(
        "Plan a three-day trip for {name} from {city}; he is recovering from {detail} and can't walk far.",
        ("name", "detail"),
        "A relaxed three-day itinerary: choose a destination reachable by a short direct train, stay in a central "
        "hotel with a lift, plan one accessible museum or garden per day, use taxis between sights, and keep "
        "evenings free to rest.",
        ("knee surgery", "a hip replacement", "a broken ankle", "a back injury", "pneumonia"),
        redacted="Plan a relaxed three-day trip for someone who can't walk far.",
    ),
    Template(
        "I, {name}, was fired from {employer} last week after reporting {detail}. What are my options?",
        ("name", "employer", "detail"),
        "If you were dismissed after raising a concern, write down the timeline, keep copies of messages, check "
        "whether whistle-blower protections apply, and speak to an employment lawyer or union before deadlines "
        "for a claim pass.",
        ("unpaid overtime", "a safety violation", "harassment by my supervisor", "accounting fraud",
         "discrimination"),
        redacted='What are my options after being dismissed for raising a concern at work?',
    ),
    Template(
        "Summarise my situation for a tax adviser: I'm {name}, living at {street}, I sold shares worth {detail} "
        "this year.",
        ("name", "street", "detail"),
        "Summary for a tax adviser: the client sold shares this year and needs to report the capital gain, work "
        "out the purchase cost and allowable expenses, check available allowances, and plan any payment due.",
        ("$18,000", "€25,400", "£9,750", "$120,000", "$3,200"),
        redacted='Summarise a share sale for a tax adviser.',
    ),
]


def build(seed: int = 7, n: int = 160, *, with_redacted: bool = False) -> list[dict[str, str]]:
    """``n`` rows from the templates in turn; ``with_redacted`` adds each row's PII-free request
    (``redacted_request``), which the bundled files leave out and the warm-started tiny model learns from."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = TEMPLATES[i % len(TEMPLATES)]
        slots = {
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "street": rng.choice(STREETS),
            "city": rng.choice(CITIES),
            "employer": rng.choice(EMPLOYERS),
            "detail": rng.choice(t.details),
        }
        pii = list(dict.fromkeys(slots[s] for s in t.pii))
        rows.append(
            {
                "user_query": t.query.format(**slots),
                "target_response": t.response.format(**slots),
                "pii_units": "||".join(pii),
            }
        )
        if with_redacted:
            rows[-1]["redacted_request"] = t.redacted
    return rows


# 64 validation rows, not 32: the validation score's spread between sampling seeds shrinks by
# about sqrt(2), so a learning gain stands further out of the noise (bench/RESULTS.md, "learning").
TRAIN_ROWS, VAL_ROWS = 96, 64


def main() -> None:
    rows = build(n=TRAIN_ROWS + VAL_ROWS)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:TRAIN_ROWS]), ("val", rows[TRAIN_ROWS:])):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in part:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
