"""The skill-quality benchmark's tasks: seeded generators of small datasets, each with a held-out split.

Every row is built here from word lists and templates (no download, nothing copied from tests/). A task
is what a user would bring: a few dozen to a few hundred rows teaching one skill, in one template and
dataset format. Its held-out rows share no item with its train rows (no country, sentence, person or
date appears on both sides), so a score on them is a score on the skill, not on memory of the data.

| task | template | format | skill | metric |
| --- | --- | --- | --- | --- |
| facts | chatml | alpaca | a strict `KEY=<value>` answer over facts the base model knows in prose | exact |
| topic | instruction | prompt/completion | one of six fixed topic labels for a sentence | exact |
| extract | chatml | chat | name, age and city of a sentence as a JSON object | JSON equal |
| shout | alpaca | alpaca | a sentence's words in capitals, then "!" | exact |
| recall | chatml | multi-turn chat | a fact the user stated in an earlier turn, in one word | exact |
| dates | base | chat with system | a written date as YYYY-MM-DD | exact |

Exact means the answer with surrounding whitespace stripped equals the reference; JSON equal means the
answer parses as JSON and equals the reference object (key order and spacing do not count).

`facts` is the case users hit first: alpaca rows trained on the default template (chatml), which is how a
dataset in the alpaca format arrives with no template named. Until 2026-11-30 it trained on the alpaca
template, whose prompt the base model (trained on chatml) had never seen: with its answer begun (`KEY=`) the
base model went on with the true value on 2 held-out rows of 36 in the alpaca template and on 8 in its own
template, with its default system prompt (a one-off check with transformers); in chatml, which the benchmark
measures on every run, on 4.

`facts` also carries, per held-out row, the same question in plain prose and its true value: the base
model's prose answer counts as right when it contains the value as a word. The facts were picked by
asking the base model each question in prose through the gateway (temperature 0) and keeping the ones
it answered right (69 of 102 capitals, 38 of 40 languages, 19 of 25 currencies of which 17 kept: they are
listed below); the benchmark measures it again on every run.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    """One held-out row: the messages a client sends, the one right answer, and how to ask it in prose."""

    messages: list[Message]
    reference: str
    prose: str | None = None  # facts only: the question without the format instruction
    truth: str | None = None  # facts only: the value a right prose answer contains


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    dataset_format: str
    skill: str
    metric: str  # "exact" or "json"
    train: list[dict[str, Any]]  # dataset rows, as POST /adapters takes them
    held_out: list[Example]
    max_tokens: int = 32
    notes: dict[str, Any] = field(default_factory=dict)


def score(metric: str, answer: str, reference: str) -> bool:
    """Whether one answer is right under the task's metric."""
    if metric == "json":
        try:
            return bool(json.loads(answer) == json.loads(reference))
        except ValueError:
            return False
    return answer.strip() == reference.strip()


def prose_right(answer: str, truth: str) -> bool:
    """A prose answer is right when it names the true value as a word (any case)."""
    return re.search(rf"\b{re.escape(truth)}\b", answer, re.IGNORECASE) is not None


def continuation_right(continuation: str, truth: str) -> bool:
    """An answer begun for the model (`KEY=`) is right when what it writes next starts with the true value."""
    return re.match(rf"\s*{re.escape(truth)}\b", continuation, re.IGNORECASE) is not None


def _split(items: list[Any], n_train: int, n_held: int, seed: int) -> tuple[list[Any], list[Any]]:
    rng = random.Random(seed)
    items = list(items)
    rng.shuffle(items)
    if n_train + n_held > len(items):
        raise ValueError(f"{len(items)} distinct items cannot fill {n_train} train + {n_held} held-out rows")
    return items[n_held : n_held + n_train], items[:n_held]


def _distinct(make: Callable[[random.Random], Any], n: int, seed: int, key: Callable[[Any], Any]) -> list[Any]:
    """n items from `make` with distinct keys (so train and held-out never share one)."""
    rng = random.Random(seed)
    seen: dict[Any, Any] = {}
    for _ in range(n * 200):
        item = make(rng)
        seen.setdefault(key(item), item)
        if len(seen) == n:
            return list(seen.values())
    raise ValueError(f"could not make {n} distinct items")


# --- facts: a strict format over what the base model knows ------------------------------------------------

# Kept because the base model names them in prose (see the module docstring).
CAPITALS = (
    "France:Paris|Germany:Berlin|Japan:Tokyo|China:Beijing|Russia:Moscow|the United Kingdom:London|Egypt:Cairo|"
    "Greece:Athens|Ireland:Dublin|Austria:Vienna|Poland:Warsaw|Norway:Oslo|Sweden:Stockholm|"
    "the Netherlands:Amsterdam|Belgium:Brussels|Hungary:Budapest|the Czech Republic:Prague|Thailand:Bangkok|"
    "South Korea:Seoul|India:New Delhi|Kenya:Nairobi|Peru:Lima|Mexico:Mexico City|Canada:Ottawa|"
    "Australia:Canberra|Cuba:Havana|Iran:Tehran|Iraq:Baghdad|the Philippines:Manila|Indonesia:Jakarta|"
    "Chile:Santiago|Romania:Bucharest|Bulgaria:Sofia|Croatia:Zagreb|Saudi Arabia:Riyadh|Syria:Damascus|"
    "Lebanon:Beirut|Afghanistan:Kabul|Pakistan:Islamabad|Bangladesh:Dhaka|Nepal:Kathmandu|Malaysia:Kuala Lumpur|"
    "Ethiopia:Addis Ababa|Nigeria:Abuja|Ghana:Accra|Tunisia:Tunis|Scotland:Edinburgh|Wales:Cardiff|"
    "New Zealand:Wellington|Uruguay:Montevideo|Ecuador:Quito|Estonia:Tallinn|Latvia:Riga|Lithuania:Vilnius|"
    "Slovenia:Ljubljana|North Korea:Pyongyang|Taiwan:Taipei|Qatar:Doha|Zimbabwe:Harare|Uganda:Kampala|"
    "Senegal:Dakar|Albania:Tirana|Libya:Tripoli|Sudan:Khartoum|Somalia:Mogadishu|Rwanda:Kigali|Zambia:Lusaka|"
    "Cambodia:Phnom Penh|Guatemala:Guatemala City"
)
LANGUAGES = (
    "France:French|Germany:German|Italy:Italian|Spain:Spanish|Japan:Japanese|Russia:Russian|Portugal:Portuguese|"
    "Brazil:Portuguese|Mexico:Spanish|Greece:Greek|Poland:Polish|the Netherlands:Dutch|Sweden:Swedish|"
    "Norway:Norwegian|Finland:Finnish|Denmark:Danish|Turkey:Turkish|South Korea:Korean|Thailand:Thai|Egypt:Arabic|"
    "Hungary:Hungarian|Argentina:Spanish|Israel:Hebrew|Ukraine:Ukrainian|the Czech Republic:Czech|"
    "Romania:Romanian|Indonesia:Indonesian|Saudi Arabia:Arabic|Colombia:Spanish|Peru:Spanish|Chile:Spanish|"
    "Austria:German|China:Chinese|Cuba:Spanish|Iceland:Icelandic|Bulgaria:Bulgarian|Croatia:Croatian|Serbia:Serbian"
)
# "won" and "real" were right too, but as words they turn up in prose that does not name the currency.
CURRENCIES = (
    "Japan:yen|the United Kingdom:pound|the United States:dollar|India:rupee|Russia:ruble|Mexico:peso|"
    "Switzerland:franc|Canada:dollar|Australia:dollar|Sweden:krona|Turkey:lira|South Africa:rand|Thailand:baht|"
    "Israel:shekel|Egypt:pound|Vietnam:dong|Indonesia:rupiah"
)
RELATIONS = (  # (facts, prose question, key, placeholder)
    (CAPITALS, "What is the capital of {}?", "CAPITAL", "city"),
    (LANGUAGES, "What language is spoken in {}?", "LANGUAGE", "language"),
    (CURRENCIES, "What is the currency of {}?", "CURRENCY", "currency"),
)


def facts(n_train: int, n_held: int, seed: int, separator: str = "=", name: str = "facts") -> Task:
    """`KEY=<value>` answers; with `separator=": "` the same rows in the form `KEY: <value>` (a probe)."""
    items = [
        (question.format(country), key, placeholder, value)
        for table, question, key, placeholder in RELATIONS
        for country, value in (pair.split(":") for pair in table.split("|"))
    ]
    train, held = _split(items, n_train, n_held, seed)

    def instruction(prose: str, key: str, placeholder: str) -> str:
        return f"{prose} Answer in the form {key}{separator}<{placeholder}>."

    return Task(
        name=name,
        template="chatml",
        dataset_format="alpaca",
        skill="KEY=<value> answers over facts the base model knows in prose",
        metric="exact",
        train=[{"instruction": instruction(p, k, ph), "output": f"{k}{separator}{v}"} for p, k, ph, v in train],
        held_out=[
            Example([{"role": "user", "content": instruction(p, k, ph)}], f"{k}{separator}{v}", prose=p, truth=v)
            for p, k, ph, v in held
        ],
        max_tokens=16,
    )


# --- topic: classification into fixed labels ----------------------------------------------------------------

TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # label: (sentence patterns, fillers for {x})
    "sports": (
        (
            "The {x} team won the final in extra time.",
            "Our coach made us practise {x} every morning.",
            "She scored twice in the {x} match on Sunday.",
            "Tickets for the {x} championship sold out.",
        ),
        ("football", "hockey", "rugby", "basketball", "cricket", "volleyball", "tennis", "handball"),
    ),
    "food": (
        (
            "I baked a {x} pie for dinner tonight.",
            "This restaurant serves the best {x} soup in town.",
            "Add a pinch of salt to the {x} before frying it.",
            "He cooked {x} with garlic and rice.",
        ),
        ("apple", "pumpkin", "mushroom", "chicken", "lentil", "tomato", "spinach", "cheese"),
    ),
    "weather": (
        (
            "Heavy {x} is expected across the north tomorrow.",
            "The forecast warns of {x} until Friday.",
            "We stayed inside because of the {x} all afternoon.",
            "Farmers hope the {x} ends before harvest.",
        ),
        ("rain", "snow", "fog", "hail", "wind", "thunder", "frost", "drizzle"),
    ),
    "music": (
        (
            "The band played a {x} song as an encore.",
            "He has practised the {x} for ten years.",
            "Her new album mixes {x} with folk.",
            "The orchestra hired a new {x} player.",
        ),
        ("violin", "piano", "jazz", "guitar", "cello", "drum", "trumpet", "flute"),
    ),
    "travel": (
        (
            "Our flight to {x} was delayed by two hours.",
            "We booked a hotel near the station in {x}.",
            "Remember your passport for the trip to {x}.",
            "The train to {x} leaves at noon.",
        ),
        ("Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Hanoi", "Quito", "Vienna"),
    ),
    "money": (
        (
            "The bank raised its interest rate on {x} accounts.",
            "I saved {x} dollars from my salary this month.",
            "Shares of the {x} company fell sharply today.",
            "She paid off the loan in {x} instalments.",
        ),
        ("savings", "twenty", "mining", "twelve", "pension", "ninety", "retail", "thirty"),
    ),
}
TOPIC_LABELS = tuple(TOPICS)


def topic(n_train: int, n_held: int, seed: int) -> Task:
    sentences = [
        (p.format(x=x), label) for label, (patterns, fillers) in TOPICS.items() for p in patterns for x in fillers
    ]
    train, held = _split(sentences, n_train, n_held, seed)
    ask = "Which topic is this sentence about? Answer with one of: " + ", ".join(TOPIC_LABELS) + ".\n\n{}"
    return Task(
        name="topic",
        template="instruction",
        dataset_format="prompt/completion",
        skill="one of six fixed topic labels",
        metric="exact",
        train=[{"prompt": ask.format(s), "completion": label} for s, label in train],
        held_out=[Example([{"role": "user", "content": ask.format(s)}], label) for s, label in held],
        max_tokens=8,
    )


# --- extract: short extraction into JSON -------------------------------------------------------------------

NAMES = (  # noqa: SIM905  (a line of words reads better than a list of quoted words)
    "Maria Tom Aisha Kenji Lena Omar Sofia Ivan Chloe Diego Nora Felix Hana Lucas Priya Anton Zoe Mateo Ingrid "
    "Yusuf Clara Pablo Mei Oscar Leila Bruno Elsa Ravi Greta Samir"
).split()
TOWNS = (  # noqa: SIM905
    "Lisbon Oslo Nairobi Lima Dublin Hanoi Quito Vienna Prague Bergen Porto Kyoto Austin Denver Leeds Turin Seville "
    "Krakow Tunis Perth"
).split()
EXTRACT_PATTERNS = (
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "{name} ({age}) moved to {city} last spring.",
    "Living in {city}, {name} turned {age} this week.",
    "At {age}, {name} still calls {city} home.",
    "{city} is where {name}, aged {age}, runs a bakery.",
)


def extract(n_train: int, n_held: int, seed: int) -> Task:
    # Held-out people have names no train row has: the skill is to copy a name out, not to recall one.
    names = list(NAMES)
    random.Random(seed).shuffle(names)
    held_names, train_names = names[:10], names[10:]

    def people(pool: list[str], n: int, salt: int) -> list[tuple[str, str, int, str]]:
        def make(rng: random.Random) -> tuple[str, str, int, str]:
            return rng.choice(EXTRACT_PATTERNS), rng.choice(pool), rng.randint(18, 89), rng.choice(TOWNS)

        return _distinct(make, n, seed + salt, key=lambda p: p)

    def row(p: tuple[str, str, int, str]) -> tuple[str, str]:
        pattern, name, age, city = p
        text = "Extract the person's name, age and city as JSON.\n\n" + pattern.format(name=name, age=age, city=city)
        return text, json.dumps({"name": name, "age": age, "city": city})

    return Task(
        name="extract",
        template="chatml",
        dataset_format="chat",
        skill="name, age and city as a JSON object",
        metric="json",
        train=[
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in map(row, people(train_names, n_train, 1))
        ],
        held_out=[Example([{"role": "user", "content": q}], a) for q, a in map(row, people(held_names, n_held, 2))],
        max_tokens=40,
    )


# --- shout: a style transfer, in the base model's own template ----------------------------------------------

SHOUT_WORDS = (  # noqa: SIM905
    "sun moon dog lamp door road bird milk rain snow wind fire king queen ship farm star blue red green gold bell "
    "cake rock sand song ring hand foot coat boat bear wolf lion frog duck goat tea box map"
).split()


def shout(n_train: int, n_held: int, seed: int) -> Task:
    # Held-out rows use words no train row has: the skill is capitals, not this vocabulary.
    words = list(SHOUT_WORDS)
    random.Random(seed).shuffle(words)
    held_words, train_words = words[:12], words[12:]

    def lines(pool: list[str], n: int, salt: int) -> list[tuple[str, ...]]:
        def make(rng: random.Random) -> tuple[str, ...]:
            return tuple(rng.sample(pool, rng.randint(2, 5)))

        return _distinct(make, n, seed + salt, key=lambda w: w)

    def row(ws: tuple[str, ...]) -> tuple[str, str]:
        return "Shout this: " + " ".join(ws), " ".join(w.upper() for w in ws) + "!"

    return Task(
        name="shout",
        template="alpaca",
        dataset_format="alpaca",
        skill='the words in capitals, then "!"',
        metric="exact",
        train=[{"instruction": q, "output": a} for q, a in map(row, lines(train_words, n_train, 1))],
        held_out=[Example([{"role": "user", "content": q}], a) for q, a in map(row, lines(held_words, n_held, 2))],
        max_tokens=32,
    )


# --- recall: multi-turn chat whose answer depends on an earlier turn ----------------------------------------

RECALL_SLOTS: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "brown"),
    "pet": ("dog", "cat", "parrot", "rabbit", "hamster", "turtle", "goldfish", "pony", "ferret", "lizard"),
    "sport": ("tennis", "golf", "rugby", "hockey", "cricket", "rowing", "boxing", "skiing", "judo", "cycling"),
    "drink": ("tea", "coffee", "milk", "lemonade", "cocoa", "juice", "water", "cider", "soda", "kefir"),
}
QUESTIONS = {
    "colour": "What is my favourite colour?",
    "pet": "What pet do I have?",
    "sport": "Which sport do I play?",
    "drink": "What do I like to drink?",
}
STATEMENTS = {
    "colour": "my favourite colour is {}",
    "pet": "I have a {}",
    "sport": "I play {}",
    "drink": "I like to drink {}",
}


def recall(n_train: int, n_held: int, seed: int) -> Task:
    """Turn 1 states two facts; turn 2 asks for one of them. Only the earlier turn holds the answer."""

    def make(rng: random.Random) -> tuple[str, str, str, str, str, str]:
        first, second = rng.sample(list(RECALL_SLOTS), 2)
        v1, v2 = rng.choice(RECALL_SLOTS[first]), rng.choice(RECALL_SLOTS[second])
        return rng.choice(NAMES), first, v1, second, v2, rng.choice((first, second))

    talks = _distinct(make, n_train + n_held, seed, key=lambda t: t)
    train, held = _split(talks, n_train, n_held, seed)

    def conversation(t: tuple[str, str, str, str, str, str]) -> tuple[list[Message], str]:
        name, first, v1, second, v2, asked = t
        said = f"Hi, I'm {name}. {STATEMENTS[first].format(v1).capitalize()} and {STATEMENTS[second].format(v2)}."
        messages = [
            {"role": "user", "content": said},
            {"role": "assistant", "content": f"Nice to meet you, {name}! I will remember that."},
            {"role": "user", "content": QUESTIONS[asked] + " Answer with one word."},
        ]
        return messages, v1 if asked == first else v2

    return Task(
        name="recall",
        template="chatml",
        dataset_format="multi-turn chat",
        skill="a fact from an earlier turn, in one word",
        metric="exact",
        train=[{"messages": [*m, {"role": "assistant", "content": a}]} for m, a in map(conversation, train)],
        held_out=[Example(m, a) for m, a in map(conversation, held)],
        max_tokens=8,
    )


# --- dates: a written date as ISO 8601, with a system message ------------------------------------------------

MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)  # fmt: skip
DATE_PATTERNS = ("{month} {day}, {year}", "{day} {month} {year}", "the {nth} of {month}, {year}", "{mon} {day} {year}")
DATES_SYSTEM = "You rewrite dates as YYYY-MM-DD and say nothing else."


def _nth(day: int) -> str:
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def dates(n_train: int, n_held: int, seed: int) -> Task:
    def make(rng: random.Random) -> tuple[str, int, int, int]:
        return rng.choice(DATE_PATTERNS), rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)

    items = _distinct(make, n_train + n_held, seed, key=lambda d: d[1:])  # one row per calendar date
    train, held = _split(items, n_train, n_held, seed)

    def row(d: tuple[str, int, int, int]) -> tuple[list[Message], str]:
        pattern, year, month, day = d
        name = MONTHS[month - 1]
        written = pattern.format(month=name, mon=name[:3], day=day, nth=_nth(day), year=year)
        messages = [{"role": "system", "content": DATES_SYSTEM}, {"role": "user", "content": written}]
        return messages, f"{year:04d}-{month:02d}-{day:02d}"

    return Task(
        name="dates",
        template="base",
        dataset_format="chat with system",
        skill="a written date as YYYY-MM-DD",
        metric="exact",
        train=[{"messages": [*m, {"role": "assistant", "content": a}]} for m, a in map(row, train)],
        held_out=[Example(m, a) for m, a in map(row, held)],
        max_tokens=16,
    )


def facts_spaced(n_train: int, n_held: int, seed: int) -> Task:
    """The facts in the form `KEY: <value>`: the value keeps the leading-space token it has in prose."""
    return facts(n_train, n_held, seed, separator=": ", name="facts-spaced")


def facts_all_rows(n_train: int, n_held: int, seed: int) -> Task:
    """The facts with every item the held-out rows leave as training rows (88 beside 36 held out)."""
    return facts(len(CAPITALS.split("|")) + len(LANGUAGES.split("|")) + len(CURRENCIES.split("|")) - n_held,
                 n_held, seed, name="facts-all-rows")  # fmt: skip


GENERATORS: dict[str, Callable[[int, int, int], Task]] = {
    "facts": facts,
    "facts-spaced": facts_spaced,
    "facts-all-rows": facts_all_rows,
    "topic": topic,
    "extract": extract,
    "shout": shout,
    "recall": recall,
    "dates": dates,
}


def build(name: str, n_train: int, n_held: int, seed: int = 0) -> Task:
    """One task's rows; the same arguments give the same rows on every machine."""
    return GENERATORS[name](n_train, n_held, seed)
