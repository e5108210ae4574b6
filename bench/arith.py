"""A small multilingual arithmetic check: templated questions, greedy answers, scored by regex.

Items are generated from a seed (no data file): "What is 17 + 25? Answer with a number." in ten languages,
with addition, subtraction and multiplication of small numbers. An answer is correct when the first integer
in it, after removing an echo of the question ("17 + 25 ="), equals the result (digits of other scripts
are folded to Western ones).
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

TEMPLATES: dict[str, str] = {
    "en": "What is {a} {op} {b}? Answer with a number only.",
    "zh": "{a} {op} {b} 等于多少？只用一个数字回答。",
    "it": "Quanto fa {a} {op} {b}? Rispondi solo con un numero.",
    "vi": "{a} {op} {b} bằng bao nhiêu? Chỉ trả lời bằng một con số.",
    "ar": "كم يساوي {a} {op} {b}؟ أجب برقم فقط.",
    "ko": "{a} {op} {b}은(는) 얼마입니까? 숫자로만 답하세요.",
    "th": "{a} {op} {b} เท่ากับเท่าไร ตอบเป็นตัวเลขเท่านั้น",
    "bn": "{a} {op} {b} কত? শুধু একটি সংখ্যা দিয়ে উত্তর দিন।",
    "sw": "{a} {op} {b} ni ngapi? Jibu kwa namba tu.",
    "jv": "Pira {a} {op} {b}? Wangsulana nganggo angka wae.",
}
_NUM = re.compile(r"-?\d+")


@dataclass
class Item:
    lang: str
    prompt: str
    answer: int
    a: int = 0
    b: int = 0


def items(per_lang: int, langs: list[str], seed: int = 0) -> list[Item]:
    """`per_lang` items per language; the same numbers in every language (a parallel set)."""
    rng = random.Random(seed)
    problems = []
    for k in range(per_lang):
        op = "+-*"[k % 3]  # balanced operations, even for a handful of items
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(10, 99), rng.randint(10, 99))
        if op == "-" and b > a:
            a, b = b, a
        problems.append((a, op, b, a + b if op == "+" else a - b if op == "-" else a * b))
    shown = {"+": "+", "-": "-", "*": "×"}
    return [Item(lg, TEMPLATES[lg].format(a=a, op=shown[op], b=b), r, a, b) for lg in langs for a, op, b, r in problems]


def _fold_digits(text: str) -> str:
    return "".join(str(unicodedata.digit(c)) if c.isdigit() and not c.isascii() else c for c in text)


def first_int(text: str) -> int | None:
    m = _NUM.search(_fold_digits(unicodedata.normalize("NFKC", text)).replace(",", ""))
    return int(m.group(0)) if m else None


def correct(item: Item, answer: str) -> bool:
    text = _fold_digits(unicodedata.normalize("NFKC", answer)).replace(",", "")
    text = re.sub(rf"{item.a}\s*[-+*×xX−]\s*{item.b}\s*=?", " ", text)
    return first_int(text) == item.answer
