"""Prompt templates: an instruction, optional answer choices, demonstrations, the query.

Plain completion format rather than the chat template: a 135M model follows a repeated
``Input: ... / Answer: ...`` pattern far more reliably than instructions, and the pattern
lets demonstrations teach the answer format. Composition under a token budget drops the
least useful demonstrations first (callers pass them most useful first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeweave.errors import ConfigError


@dataclass(frozen=True)
class Example:
    """One demonstration as text."""

    input: str
    output: str


@dataclass(frozen=True)
class PromptTemplate:
    instruction: str
    input_label: str = "Input"
    output_label: str = "Answer"
    choices: tuple[str, ...] = ()
    separator: str = "\n\n"

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ConfigError("a prompt template needs a non-empty instruction")
        if not self.input_label or not self.output_label:
            raise ConfigError("input_label and output_label must be non-empty")
        object.__setattr__(self, "choices", tuple(self.choices))

    def to_dict(self) -> dict[str, object]:
        return {"instruction": self.instruction, "input_label": self.input_label,
                "output_label": self.output_label, "choices": list(self.choices),
                "separator": self.separator}

    @classmethod
    def from_dict(cls, doc: object) -> PromptTemplate:
        if not isinstance(doc, dict) or not isinstance(doc.get("instruction"), str):
            raise ConfigError("a prompt template is a JSON object with at least an "
                              "\"instruction\" string (as tasks tune-prompt writes it)")
        unknown = set(doc) - {"instruction", "input_label", "output_label", "choices",
                              "separator"}
        if unknown:
            raise ConfigError(f"unknown prompt template keys {sorted(unknown)}")
        choices = doc.get("choices", [])
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ConfigError("a prompt template's \"choices\" must be a list of strings")
        for key in ("input_label", "output_label", "separator"):
            if key in doc and not isinstance(doc[key], str):
                raise ConfigError(f"a prompt template's {key!r} must be a string")
        return cls(doc["instruction"], doc.get("input_label", "Input"),
                   doc.get("output_label", "Answer"), tuple(choices),
                   doc.get("separator", "\n\n"))

    def header(self) -> str:
        head = self.instruction.strip()
        if self.choices:
            head += f"\nPossible answers: {', '.join(self.choices)}."
        return head

    def block(self, input_text: str, output: str | None = None) -> str:
        tail = f" {output}" if output is not None else ""
        return f"{self.input_label}: {input_text}\n{self.output_label}:{tail}"

    def render(self, query: str, demos: Sequence[Example] = ()) -> str:
        """The whole prompt; the model continues after ``<output_label>:``."""
        parts = [self.header(), *(self.block(d.input, d.output) for d in demos), self.block(query)]
        return self.separator.join(parts)


def compose(template: PromptTemplate, query: str, ranked: Sequence[Example],
            budget_tokens: int, count_tokens: Callable[[str], int],
            order: Callable[[list[int]], list[int]] | None = None) -> tuple[str, list[int]]:
    """Fit as many demonstrations as the budget allows.

    ``ranked`` is most useful first; demonstrations are added greedily in that order while the
    whole prompt stays within ``budget_tokens`` (one that does not fit is skipped, a shorter
    later one may still fit). ``order`` then arranges the chosen indices for the final prompt
    (e.g. most similar last). Returns the prompt and the chosen indices in prompt order.
    """
    if budget_tokens <= 0:
        raise ConfigError(f"budget_tokens must be > 0 (got {budget_tokens})")
    sep = count_tokens(template.separator) if template.separator.strip() else 1
    used = count_tokens(template.render(query))
    chosen: list[int] = []
    for i, d in enumerate(ranked):
        cost = count_tokens(template.block(d.input, d.output)) + sep
        if used + cost <= budget_tokens:
            chosen.append(i)
            used += cost
    arranged = order(chosen) if order else chosen
    prompt = template.render(query, [ranked[i] for i in arranged])
    return prompt, arranged
