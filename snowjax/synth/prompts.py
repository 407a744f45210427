"""OSS-Instruct prompts adapted to pretraining: a seed file (or a snippet of it) -> a request to the teacher.

OSS-Instruct (Magicoder) shows a teacher LLM a snippet of open-source code and asks for a new
problem inspired by it. Arctic-SnowCoder's phase 3 uses the idea to turn top-ranked phase-2
files into "high-quality, problem-solving oriented code documents" (PAPER.md); the paper does
not publish its prompts, so these are ours. Templates live in config (:class:`PromptStyle`),
several styles at once, and each seed gets one style by a seeded random choice that depends
only on ``(PromptConfig.seed, seed id)``: stable across restarts, machines and seed order.

A template is a ``str.format`` string with these fields:

==================  ==========================================================
``{seed}``          the seed's code (whole file, or a window of lines)
``{language}``      the seed's language as in the data (``cpp``, ``python``, ...)
``{language_name}`` its display name (``C++``, ``Python``, ...)
``{fence}``         the Markdown fence tag asked for (``cpp``, ``python``, ...)
``{seed_kind}``     ``file`` or ``snippet``
==================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import string
from dataclasses import dataclass, field
from typing import Any

from snowjax.config import ConfigError

# language -> (display name, fence tag asked for in prompts)
LANGUAGE_NAMES: dict[str, tuple[str, str]] = {
    "python": ("Python", "python"),
    "java": ("Java", "java"),
    "cpp": ("C++", "cpp"),
    "c": ("C", "c"),
    "javascript": ("JavaScript", "javascript"),
    "php": ("PHP", "php"),
    "csharp": ("C#", "csharp"),
    "go": ("Go", "go"),
    "typescript": ("TypeScript", "typescript"),
    "sql": ("SQL", "sql"),
    "ruby": ("Ruby", "ruby"),
    "rust": ("Rust", "rust"),
    "jupyter": ("Python (Jupyter notebook)", "python"),
    "scala": ("Scala", "scala"),
    "kotlin": ("Kotlin", "kotlin"),
    "shell": ("Shell", "bash"),
    "dart": ("Dart", "dart"),
    "swift": ("Swift", "swift"),
}
TEMPLATE_FIELDS = frozenset({"seed", "language", "language_name", "fence", "seed_kind"})

DEFAULT_SYSTEM = "You are a senior software engineer. You write correct, clear, well-documented code."

_REWRITE = """Below is a {seed_kind} of {language_name} code from an open-source project.

```{fence}
{seed}
```

Rewrite it into one self-contained, high-quality {language_name} file that solves a clear, practical problem \
inspired by the code above. Use descriptive names, explain the problem and the approach in docstrings or \
comments, and handle edge cases. Reply with the complete file in a single ```{fence} code block and nothing else."""

_PROBLEM = """Take inspiration from this {seed_kind} of {language_name} code:

```{fence}
{seed}
```

Invent a programming problem that this kind of code solves, then solve it. Write one {language_name} file that \
starts with a comment stating the problem precisely (inputs, outputs, constraints), followed by a complete, \
well-documented solution that explains each step, and a short example of its use. Reply with the file in a \
single ```{fence} code block and nothing else."""

_TESTED = """Here is a {seed_kind} of {language_name} code:

```{fence}
{seed}
```

Write a small, self-contained {language_name} module with one focused, reusable piece of functionality \
inspired by it: documented public functions or classes, then tests of them in the same file that use only \
the language's standard library or test tooling. Reply with the file in a single ```{fence} code block and \
nothing else."""


@dataclass
class PromptStyle:
    """One way of asking: a template (fields in the module docstring) and its share of the seeds."""

    name: str = ""
    template: str = ""
    weight: float = 1.0


def default_styles() -> list[PromptStyle]:
    return [
        PromptStyle("rewrite", _REWRITE, 1.0),
        PromptStyle("problem_solution", _PROBLEM, 1.0),
        PromptStyle("tested_module", _TESTED, 1.0),
    ]


@dataclass
class PromptConfig:
    """How seeds become prompts."""

    styles: list[PromptStyle] = field(default_factory=default_styles)
    system: str = DEFAULT_SYSTEM  # the system message (chat API); "" for none
    seed_max_chars: int = 4000  # a longer seed is cut to a window of whole lines within this
    seed_max_lines: int = 120  # ... and at most this many lines
    # OSS-Instruct shows snippets: this share of the seeds that fit whole still get a random window of
    # snippet_min_lines..seed_max_lines lines (0: whole files whenever they fit).
    snippet_probability: float = 0.0
    snippet_min_lines: int = 10
    seed: int = 0  # style and snippet choices are a function of (seed, seed id)


def validate_prompts(cfg: PromptConfig, key: str = "prompts") -> None:
    if not cfg.styles:
        raise ConfigError(f"{key}.styles: give at least one prompt style")
    names = [s.name for s in cfg.styles]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"{key}.styles: every style needs a distinct, non-empty name, got {names}")
    for i, s in enumerate(cfg.styles):
        where = f"{key}.styles[{i}]"
        if s.weight <= 0:
            raise ConfigError(f"{where}.weight: must be > 0, got {s.weight}")
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(s.template) if f is not None}
        except ValueError as e:
            raise ConfigError(
                f"{where}.template: not a valid format string ({e}); write literal braces as {{{{ }}}}"
            ) from e
        unknown = sorted(used - TEMPLATE_FIELDS)
        if unknown:
            raise ConfigError(f"{where}.template: unknown fields {unknown} (known: {sorted(TEMPLATE_FIELDS)})")
        if "seed" not in used:
            raise ConfigError(f"{where}.template: must contain {{seed}}")
    for k in ("seed_max_chars", "seed_max_lines", "snippet_min_lines"):
        if getattr(cfg, k) < 1:
            raise ConfigError(f"{key}.{k}: must be >= 1, got {getattr(cfg, k)}")
    if not 0 <= cfg.snippet_probability <= 1:
        raise ConfigError(f"{key}.snippet_probability: must be in [0, 1], got {cfg.snippet_probability}")


@dataclass
class SynthPrompt:
    """A prompt for one seed; ``seed_span`` is the [start, end) character range of the seed shown."""

    seed_id: str
    language: str
    style: str
    text: str
    system: str
    seed_span: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rng(cfg: PromptConfig, seed_id: str, purpose: str) -> random.Random:
    """A generator that depends only on (config seed, seed id, purpose): stable across runs and processes."""
    digest = hashlib.sha256(f"{cfg.seed}\x00{seed_id}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def choose_style(cfg: PromptConfig, seed_id: str) -> PromptStyle:
    """The style for ``seed_id``: a weighted draw that is the same on every run."""
    rng = _rng(cfg, seed_id, "style")
    return rng.choices(cfg.styles, weights=[s.weight for s in cfg.styles], k=1)[0]


def seed_window(cfg: PromptConfig, seed_id: str, content: str) -> tuple[int, int]:
    """The [start, end) character range of ``content`` shown to the teacher.

    The whole file when it fits ``seed_max_chars`` / ``seed_max_lines`` (unless drawn for a
    snippet), else a window of whole lines at a seeded random start, cut to ``seed_max_chars``.
    """
    lines = content.splitlines(keepends=True)
    fits = len(content) <= cfg.seed_max_chars and len(lines) <= cfg.seed_max_lines
    rng = _rng(cfg, seed_id, "window")
    snippet = rng.random() < cfg.snippet_probability and len(lines) > cfg.snippet_min_lines
    if fits and not snippet:
        return 0, len(content)
    most = min(cfg.seed_max_lines, len(lines))
    count = rng.randint(min(cfg.snippet_min_lines, most), most) if fits else most
    first = rng.randint(0, len(lines) - count)
    start = sum(len(line) for line in lines[:first])
    end = start
    for line in lines[first : first + count]:
        if end + len(line) - start > cfg.seed_max_chars:
            break
        end += len(line)
    if end == start:  # a single line longer than the limit: cut inside it
        end = start + cfg.seed_max_chars
    return start, end


def build_prompt(cfg: PromptConfig, seed_id: str, language: str, content: str) -> SynthPrompt:
    """The prompt for one seed record (``id``, ``language``, ``content``)."""
    style = choose_style(cfg, seed_id)
    start, end = seed_window(cfg, seed_id, content)
    name, fence = LANGUAGE_NAMES.get(language, (language.capitalize(), language))
    text = style.template.format(
        seed=content[start:end].rstrip("\n"),
        language=language,
        language_name=name,
        fence=fence,
        seed_kind="file" if (start, end) == (0, len(content)) else "snippet",
    )
    return SynthPrompt(seed_id, language, style.name, text, cfg.system, (start, end))
