"""Constraints and prompts of the structured-output tests: ten JSON Schemas (nested objects,
arrays, enums, required fields, bounded numbers, patterned strings) and regex, grammar and
choice cases, each with prompts that invite SmolLM2 to answer in that form.

Free-text strings are ASCII letters of bounded length (a pattern): with only maxLength,
SmolLM2 fills strings with emoji of several tokens each and runs past max_tokens."""

from __future__ import annotations

SCHEMAS: list[dict] = [
    {  # a flat object with required fields
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {  # an enum
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    {  # nested objects
        "type": "object",
        "properties": {
            "city": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
                    "country": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
                },
                "required": ["name", "country"],
                "additionalProperties": False,
            }
        },
        "required": ["city"],
        "additionalProperties": False,
    },
    {  # an array of strings
        "type": "object",
        "properties": {
            "fruits": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["fruits"],
        "additionalProperties": False,
    },
    {  # a number with bounds
        "type": "object",
        "properties": {"temperature": {"type": "number", "minimum": -50, "maximum": 60}},
        "required": ["temperature"],
        "additionalProperties": False,
    },
    {  # strings with patterns
        "type": "object",
        "properties": {
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
        "required": ["date", "code"],
        "additionalProperties": False,
    },
    {  # a boolean and an integer
        "type": "object",
        "properties": {
            "answer": {"type": "boolean"},
            "confidence": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    },
    {  # an array of objects
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,10}$"},
                        "role": {"enum": ["admin", "user"]},
                    },
                    "required": ["name", "role"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": 2,
            }
        },
        "required": ["people"],
        "additionalProperties": False,
    },
    {  # an optional field
        "type": "object",
        "properties": {
            "title": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"},
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        },
        "required": ["title"],
        "additionalProperties": False,
    },
    {  # a top-level array of bounded integers
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 99},
        "minItems": 2,
        "maxItems": 4,
    },
]

TOPICS = [
    "a cat",
    "the sea",
    "Paris",
    "a red apple",
    "a winter day",
    "a teacher",
    "the moon",
    "a football match",
    "a computer",
    "a birthday party",
    "a mountain",
    "a train",
    "a library",
    "a doctor",
    "a garden",
    "the sun",
    "a river",
    "a rainy day",
    "a robot",
    "a bakery",
]


def schema_prompt(schema: dict, topic: str) -> str:
    """A short request for JSON about the topic (the schema's keys, not the whole schema:
    short prompts keep the 200-request test fast on two cores)."""
    if schema["type"] == "array":
        return f"Give a JSON list of 2 to 4 small numbers about {topic}. Reply with JSON only."
    keys = ", ".join(schema["properties"])
    return f"Describe {topic} as a JSON object with the keys {keys}. Reply with JSON only."


# (regex, prompts) pairs: the answers SmolLM2 is asked for fit the pattern.
REGEXES: list[tuple[str, list[str]]] = [
    (r"[0-9]{4}-[0-9]{2}-[0-9]{2}", ["What is the date of the moon landing? Use YYYY-MM-DD."]),
    (r"(yes|no)", ["Is water wet? Answer yes or no.", "Is fire cold? Answer yes or no."]),
    (r"[A-Z][a-z]+( [a-z]+){0,4}\.", ["Name a colour.", "What is the capital of France?"]),
    (r"\+?[0-9]{1,3}", ["How many legs does a spider have?", "What is 7 times 6?"]),
]

# An EBNF grammar: an arithmetic expression of at most three terms (finite, so a model that
# would go on forever still completes within max_tokens).
GRAMMAR = r"""
root ::= term (op term)? (op term)?
op ::= "+" | "-" | "*"
term ::= num | "(" num op num ")"
num ::= [0-9] [0-9]?
"""
GRAMMAR_PROMPTS = ["Write an arithmetic expression equal to 10.", "Write a sum of three numbers."]

CHOICES: list[tuple[list[str], list[str]]] = [
    (["Yes", "No"], ["Is the sky blue? Answer Yes or No.", "Can fish fly? Answer Yes or No."]),
    (
        ["positive", "negative", "neutral"],
        ["Sentiment of 'I love this film!'? One word: positive, negative or neutral."],
    ),
    (["Paris", "London", "Rome"], ["What is the capital of Italy?"]),
]
